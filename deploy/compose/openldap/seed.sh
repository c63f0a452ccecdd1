#!/bin/sh
# Loads the directory offline, before slapd ever runs: the test users, the
# peer account (with its password hashed here) as a member of smtp-users.
set -eu
mkdir -p /etc/ldap-demo /var/lib/ldap-demo/db
cp /seed/slapd.conf /etc/ldap-demo/slapd.conf
{
  sed '/^cn: smtp-users$/a member: uid=relay-peer,ou=people,dc=example,dc=com' /seed/test-users.ldif
  echo
  cat /seed/peer.ldif
  echo "userPassword: $(slappasswd -s peer-secret)"
} > /seed/all.ldif
slaptest -Q -u -f /etc/ldap-demo/slapd.conf
slapadd -q -f /etc/ldap-demo/slapd.conf -l /seed/all.ldif
chown -R openldap:openldap /var/lib/ldap-demo /etc/ldap-demo
