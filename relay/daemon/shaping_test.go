package daemon

import (
	"testing"
	"time"

	"github.com/smarthost/smarthost/configs"
	"github.com/smarthost/smarthost/relay/upstream"
)

// An upstream's limits and throttle replies become its budget and rules:
// configured replies first, the built-in ones after unless switched off,
// texts matched without regard to case.
func TestUpstreamShaping(t *testing.T) {
	f, err := configs.Parse([]byte(`
listeners: [{address: "127.0.0.1:2587", mode: plain}]
auth: {backend: static, static: {users_file: users.yaml}}
upstreams:
  - name: a
    url: "smtp://127.0.0.1:25"
    limits: {messages: "30/m", recipients: "10000/d", connections: 3}
    throttle: {replies: [{code: 451, enhanced: "4.7.1", text: "Rate Limit"}], cooldown: 2s, max_cooldown: 8s}
  - name: b
    url: "smtp://127.0.0.1:25"
    throttle: {replies: [{text: "slow down"}], default_replies: false}
`))
	if err != nil {
		t.Fatal(err)
	}
	b, rules := upstreamShaping(f.Upstreams[0], 100)
	if b.Limits.Messages == nil || b.Limits.Messages.N != 30 || b.Limits.Messages.Per != time.Minute ||
		b.Limits.Recipients.N != 10000 || b.Limits.Connections != 3 || b.Cooldown != 2*time.Second || b.MaxCooldown != 8*time.Second {
		t.Errorf("budget of a: %+v", b)
	}
	if len(rules) != 1+len(upstream.DefaultThrottleRules) || rules[0].Code != 451 || rules[0].Enhanced != "4.7.1" ||
		!rules[0].Text.MatchString("4.7.1 rate limit exceeded") {
		t.Errorf("rules of a: %d, first %+v", len(rules), rules[0])
	}
	b, rules = upstreamShaping(f.Upstreams[1], 100)
	if b.Limits.Messages != nil || b.Limits.Connections != 0 || b.Cooldown != time.Minute || b.MaxCooldown != time.Hour {
		t.Errorf("budget of b: %+v", b)
	}
	if len(rules) != 1 || !rules[0].Text.MatchString("Slow Down please") {
		t.Errorf("rules of b: %+v", rules)
	}
}
