package upstream

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/smarthost/smarthost/relay/upstream/smtpclient"
)

// ThrottleRule recognises an upstream's reply that means "you send too
// much, come back later": the whole route holds (ratelimit.Shaper) rather
// than each message spending its attempts, whether the reply is 4xx or a
// 5xx that means later. Every field given must match.
type ThrottleRule struct {
	Name string // for the log and the docs: whose reply, and its source
	Code int    // the reply code; 0 any
	// Enhanced is the enhanced status code, "4.7.0", or a range of its
	// last part, "5.2.251-255"; "" any.
	Enhanced string
	Text     *regexp.Regexp // the reply's text; nil any
}

// DefaultThrottleRules are the throttle replies of Microsoft 365 and
// Google as they publish them, and the generic "too many". A rule that
// names a 5xx must also match its text: Microsoft's 5.2.0, for one, is
// also a recipient's full mailbox (STOREDRV.Deliver ... QuotaExceeded),
// which waiting does not mend.
var DefaultThrottleRules = []ThrottleRule{
	// learn.microsoft.com/en-us/exchange/troubleshoot/send-emails/smtp-submission-improvements
	{Name: "Microsoft 365: more than 3 sessions per mailbox", Code: 432, Enhanced: "4.3.2", Text: regexp.MustCompile(`(?i)concurrent connections? limit exceeded`)},
	// Exchange Team Blog, "Changes coming to the SMTP Authenticated Submission client protocol" (2018)
	{Name: "Microsoft 365: sender thread limit", Enhanced: "4.3.2", Text: regexp.MustCompile(`(?i)sender thread limit exceeded`)},
	// smtp-submission-improvements: 10,000 recipients a day
	{Name: "Microsoft 365: daily recipient limit", Enhanced: "5.2.0", Text: regexp.MustCompile(`(?i)SubmissionQuotaExceeded`)},
	// learn.microsoft.com/en-us/Exchange/mail-flow-best-practices/continuous-error-throttling-smtp-auth-submissions
	{Name: "Microsoft 365: sender throttled after continuous errors", Enhanced: "5.2.251-255", Text: regexp.MustCompile(`(?i)sender throttled`)},
	// knowledge.workspace.google.com/admin/support/troubleshooting/gmail-smtp-errors-and-codes
	{Name: "Google: daily sending or relay limit of the user", Enhanced: "5.4.5", Text: regexp.MustCompile(`(?i)daily (user sending|sending|smtp relay) (limit|quota) exceeded`)},
	{Name: "Google: daily relay limit of the customer", Enhanced: "5.7.1", Text: regexp.MustCompile(`(?i)daily smtp relay limit exceeded`)},
	{Name: "Google: peak relay limit of the customer", Enhanced: "4.2.1", Text: regexp.MustCompile(`(?i)peak smtp relay limit exceeded`)},
	{Name: "Google: try again later, closing connection", Code: 421, Enhanced: "4.7.0", Text: regexp.MustCompile(`(?i)try again later, closing connection`)},
	// The generic forms: "421 4.7.0 Too many messages", "421 Too many
	// concurrent SMTP connections", "454 4.7.0 Too many login attempts".
	{Name: "too many (421)", Code: 421, Text: regexp.MustCompile(`(?i)too many`)},
	{Name: "too many (4.7.0)", Enhanced: "4.7.0", Text: regexp.MustCompile(`(?i)too many`)},
}

// ParseEnhancedPattern checks a rule's Enhanced: "x.y.z" or "x.y.a-b".
func ParseEnhancedPattern(s string) error {
	_, _, _, err := parseEnhanced(s)
	return err
}

func parseEnhanced(s string) (prefix [2]int, lo, hi int, err error) {
	parts := strings.Split(s, ".")
	if len(parts) != 3 {
		return prefix, 0, 0, fmt.Errorf("enhanced code %q: want x.y.z or x.y.a-b", s)
	}
	for i := 0; i < 2; i++ {
		if prefix[i], err = strconv.Atoi(parts[i]); err != nil || prefix[i] < 0 {
			return prefix, 0, 0, fmt.Errorf("enhanced code %q: want x.y.z or x.y.a-b", s)
		}
	}
	if prefix[0] != 4 && prefix[0] != 5 {
		return prefix, 0, 0, fmt.Errorf("enhanced code %q: the class must be 4 or 5", s)
	}
	a, b, isRange := strings.Cut(parts[2], "-")
	lo, err1 := strconv.Atoi(a)
	hi, err2 := lo, error(nil)
	if isRange {
		hi, err2 = strconv.Atoi(b)
	}
	if err1 != nil || err2 != nil || lo < 0 || hi < lo {
		return prefix, 0, 0, fmt.Errorf("enhanced code %q: want x.y.z or x.y.a-b", s)
	}
	return prefix, lo, hi, nil
}

func (r ThrottleRule) matches(e *smtpclient.Error) bool {
	if r.Code != 0 && e.Code != r.Code {
		return false
	}
	if r.Enhanced != "" {
		p, lo, hi, err := parseEnhanced(r.Enhanced)
		if err != nil || e.Enhanced[0] != p[0] || e.Enhanced[1] != p[1] || e.Enhanced[2] < lo || e.Enhanced[2] > hi {
			return false
		}
	}
	return r.Text == nil || r.Text.MatchString(e.Text)
}

// throttleRule returns the rule that err's reply matches, if any.
func throttleRule(rules []ThrottleRule, err error) (ThrottleRule, bool) {
	var e *smtpclient.Error
	if err == nil || !errors.As(err, &e) {
		return ThrottleRule{}, false
	}
	for _, r := range rules {
		if r.matches(e) {
			return r, true
		}
	}
	return ThrottleRule{}, false
}
