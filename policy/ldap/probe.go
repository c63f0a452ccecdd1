package ldap

import (
	"fmt"
	"slices"
	"time"

	"github.com/go-ldap/ldap/v3"
)

// ProbeResult is one server's answer to Probe.
type ProbeResult struct {
	URL string
	Err error
	// Notes say what was found: the kind of server, and that base_dn and
	// required_group exist.
	Notes []string
}

// Probe connects to every URL, binds as the service account and looks up
// base_dn and required_group there, for `check-config --probe`: a typo in
// either would otherwise show only as every login failing.
func (d *Directory) Probe() []ProbeResult {
	var out []ProbeResult
	for _, u := range d.cfg.URLs {
		r := ProbeResult{URL: u}
		c, err := d.dialURL(u, true)
		if err == nil {
			r.Notes, err = d.probeEntries(c)
			c.Close()
		}
		r.Err = err
		out = append(out, r)
	}
	return out
}

func (d *Directory) probeEntries(c *ldap.Conn) ([]string, error) {
	base := func(dn string, attrs ...string) (*ldap.Entry, error) {
		if len(attrs) == 0 {
			attrs = []string{"1.1"} // no attributes
		}
		res, err := c.Search(ldap.NewSearchRequest(dn, ldap.ScopeBaseObject, ldap.NeverDerefAliases, 1,
			int(d.cfg.Timeout/time.Second)+1, false, "(objectClass=*)", attrs, nil))
		if err != nil {
			return nil, err
		}
		if len(res.Entries) != 1 {
			return nil, fmt.Errorf("%d entries", len(res.Entries))
		}
		return res.Entries[0], nil
	}
	notes := []string{"LDAP"}
	if root, err := base("", "supportedCapabilities"); err == nil {
		caps := root.GetEqualFoldAttributeValues("supportedCapabilities")
		if slices.Contains(caps, capActiveDirectory) || slices.Contains(caps, capADLDS) {
			notes[0] = "Active Directory"
		}
	}
	if _, err := base(d.cfg.BaseDN); err != nil {
		return nil, fmt.Errorf("base_dn %q: %w", d.cfg.BaseDN, err)
	}
	notes = append(notes, "base_dn found")
	if d.cfg.RequiredGroup != "" {
		if _, err := base(d.cfg.RequiredGroup); err != nil {
			return nil, fmt.Errorf("required_group %q: %w", d.cfg.RequiredGroup, err)
		}
		notes = append(notes, "required_group found")
	}
	return notes, nil
}
