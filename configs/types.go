package configs

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// The configuration's scalar syntaxes. Each UnmarshalYAML reports a bad value as a
// *yaml.TypeError carrying the node's line, so that decoding goes on and every
// problem in a file is reported at once.

func badValue(n *yaml.Node, format string, args ...any) error {
	return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d column %d: %s", n.Line, n.Column, fmt.Sprintf(format, args...))}}
}

// Duration is a Go duration ("90s", "5m", "120h").
type Duration time.Duration

func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return badValue(n, "expected a duration such as 90s or 5m")
	}
	v, err := time.ParseDuration(strings.TrimSpace(n.Value))
	if err != nil || v < 0 {
		return badValue(n, "bad duration %q: use a Go duration such as 90s, 5m or 120h", n.Value)
	}
	*d = Duration(v)
	return nil
}

// Size is a byte count with an optional KiB, MiB or GiB suffix ("25MiB").
type Size int64

func (s *Size) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return badValue(n, "expected a size such as 25MiB")
	}
	v, err := ParseSize(n.Value)
	if err != nil {
		return badValue(n, "%v", err)
	}
	*s = Size(v)
	return nil
}

// ParseSize parses "1024", "64KiB", "25MiB" or "1GiB" (also "KB"/"MB"/"GB",
// which many operators write, with the same binary meaning).
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"KB", 1 << 10}, {"MB", 1 << 20}, {"GB", 1 << 30}, {"B", 1}} {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSpace(strings.TrimSuffix(t, u.suffix)), u.mult
			break
		}
	}
	v, err := strconv.ParseInt(t, 10, 64)
	if err != nil || v < 0 || v > (1<<62)/mult {
		return 0, fmt.Errorf("bad size %q: use a whole number with KiB, MiB or GiB, such as 25MiB", s)
	}
	return v * mult, nil
}

// Rate is "N/unit" with unit s, m, h or d ("200/h"), optionally with a
// count of units ("10/10m"); N may be a size for byte rates ("1GiB/d").
type Rate struct {
	N   int64
	Per time.Duration
}

func (r *Rate) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return badValue(n, "expected a rate such as 200/h")
	}
	v, err := ParseRate(n.Value)
	if err != nil {
		return badValue(n, "%v", err)
	}
	*r = v
	return nil
}

// maxRateWindow is the longest window a rate may have.
const maxRateWindow = 366 * 24 * time.Hour

// ParseRate parses the configuration's rate syntax.
func ParseRate(s string) (Rate, error) {
	num, unit, ok := strings.Cut(strings.TrimSpace(s), "/")
	if !ok {
		return Rate{}, fmt.Errorf("bad rate %q: use N/unit such as 200/h", s)
	}
	unit = strings.TrimSpace(unit)
	// The window may carry a count: "10/10m" is ten per ten minutes.
	k := int64(1)
	if i := strings.IndexFunc(unit, func(r rune) bool { return r < '0' || r > '9' }); i > 0 {
		v, err := strconv.ParseInt(unit[:i], 10, 32)
		if err != nil || v == 0 {
			return Rate{}, fmt.Errorf("bad rate %q: window must be a positive count and a unit, such as 10m", s)
		}
		k, unit = v, unit[i:]
	}
	per := map[string]time.Duration{"s": time.Second, "m": time.Minute, "h": time.Hour, "d": 24 * time.Hour}[unit]
	if per == 0 {
		return Rate{}, fmt.Errorf("bad rate %q: unit must be s, m, h or d", s)
	}
	// A year at most: longer windows overflow time.Duration (1/107000d
	// came out negative) and no budget is kept that long.
	if time.Duration(k) > maxRateWindow/per {
		return Rate{}, fmt.Errorf("bad rate %q: the window must be a year (366d) or less", s)
	}
	per *= time.Duration(k)
	v, err := ParseSize(num)
	if err != nil || v == 0 {
		return Rate{}, fmt.Errorf("bad rate %q: N must be a positive whole number or size", s)
	}
	return Rate{N: v, Per: per}, nil
}
