#!/usr/bin/perl
# Verify every DKIM signature of a message with Mail::DKIM (Debian's
# libmail-dkim-perl), answering its DNS questions from a local file, since
# tests have no DNS.
#
# usage: dkimverify.pl MESSAGE RECORDS
# RECORDS holds lines "selector._domainkey.domain TXT-value".
# Exit 0 when there is at least one signature and all pass; one line per
# signature.
use strict;
use warnings;
use Mail::DKIM::Verifier;
use Mail::DKIM::DNS;
use Net::DNS;

package LocalDNS;
sub new { my ($class, %rec) = @_; return bless { rec => \%rec, err => 'NOERROR' }, $class }
sub errorstring { return $_[0]{err} }
sub send {
    my ($self, $name, $type) = @_;
    $name =~ s/\.$//;
    my $p = Net::DNS::Packet->new($name, $type);
    $p->header->qr(1);
    my $v = $self->{rec}{lc $name};
    if (!defined $v) {
        $p->header->rcode('NXDOMAIN');
        return $p;
    }
    my @strings = unpack('(A255)*', $v);    # TXT strings are at most 255 bytes
    $p->push(answer => Net::DNS::RR->new(name => $name, type => 'TXT', txtdata => \@strings));
    return $p;
}

package main;
my ($msgfile, $recfile) = @ARGV;
my %rec;
open(my $r, '<', $recfile) or die "$recfile: $!";
while (<$r>) {
    chomp;
    my ($name, $value) = split(/ /, $_, 2);
    next unless $name;
    $name =~ s/\.$//;
    $rec{lc $name} = $value;
}
Mail::DKIM::DNS::resolver(LocalDNS->new(%rec));

my $dkim = Mail::DKIM::Verifier->new();
open(my $m, '<', $msgfile) or die "$msgfile: $!";
binmode $m;
while (<$m>) {
    s/\015?\012$/\015\012/;
    $dkim->PRINT($_);
}
$dkim->CLOSE;
my @sigs = $dkim->signatures;
if (!@sigs) { print "no DKIM-Signature\n"; exit 1; }
my $ok = 1;
for my $s (@sigs) {
    my $res = $s->result;
    printf "signature d=%s s=%s a=%s: %s%s\n", $s->domain, $s->selector, $s->algorithm, $res,
        ($s->result_detail ne $res ? " (" . $s->result_detail . ")" : "");
    $ok = 0 unless $res eq 'pass';
}
exit($ok ? 0 : 1);
