package webhook

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"
)

// The headers of a POST. The signature is HMAC-SHA256, keyed with the
// webhook's secret, of the timestamp, a dot and the body; a receiver
// recomputes it, compares in constant time, and refuses a timestamp far
// from its clock (a replay).
const (
	HeaderSignature = "Smarthost-Signature" // "t=1700000000,v1=<hex>"
	HeaderEventID   = "Smarthost-Event-Id"
)

// Sign returns the signature header's value for body at t.
func Sign(secret, body []byte, t time.Time) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	return "t=" + ts + ",v1=" + hex.EncodeToString(mac(secret, ts, body))
}

func mac(secret []byte, ts string, body []byte) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(ts))
	m.Write([]byte("."))
	m.Write(body)
	return m.Sum(nil)
}

// post sends the events of h's outbox, oldest first, until Close: one
// at a time, so that a receiver sees them in order. A failure (no answer,
// 5xx, 408, 429) is retried after a wait that doubles up to MaxBackoff; a
// refusal (another 4xx) is logged and given up, so that one event cannot
// hold up the rest for ever.
func (s *Sender) post(ctx context.Context, h *hook) {
	wait := s.cfg.Backoff
	for {
		select {
		case <-s.quit:
			return
		default:
		}
		n, body, ok := h.box.peek()
		if !ok {
			select {
			case <-h.box.wake:
			case <-s.quit:
			}
			continue
		}
		code, err := s.send(ctx, h, body)
		switch {
		case err == nil && code/100 == 2:
			h.box.done(n)
			s.cfg.Count(ResultSent)
			wait = s.cfg.Backoff
			continue
		case err == nil && code/100 == 4 && code != http.StatusRequestTimeout && code != http.StatusTooManyRequests:
			h.box.done(n)
			s.cfg.Count(ResultRefused)
			s.cfg.Log.Warn("webhook: the receiver refused an event; not sent again", "url", h.URL, "status", code, "event", eventID(body))
			continue
		case ctx.Err() != nil:
			return // cut short at a stop: it stays for the next start
		}
		s.cfg.Count(ResultFailed)
		s.cfg.Log.Info("webhook: post failed; will try again", "url", h.URL, "status", code, "err", err, "in", wait)
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-s.quit:
			t.Stop()
		}
		wait = min(2*wait, s.cfg.MaxBackoff)
	}
}

// send makes one POST and returns the status code.
func (s *Sender) send(ctx context.Context, h *hook, body []byte) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.URL, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "smarthost-webhook")
	req.Header.Set(HeaderEventID, eventID(body))
	req.Header.Set(HeaderSignature, Sign(h.Secret, body, time.Now()))
	resp, err := s.cfg.Client.Do(req)
	if err != nil {
		return 0, err
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10)) // so the connection is kept
	resp.Body.Close()
	return resp.StatusCode, nil
}

// eventID is the id of the payload in body.
func eventID(body []byte) string {
	var p struct{ ID string }
	json.Unmarshal(body, &p)
	return p.ID
}

// Verify checks a signature header's value against body and secret, and
// that its time is within tolerance of now: what a receiver written in Go
// does (docs/operations.md shows it in other languages).
func Verify(secret, body []byte, header string, now time.Time, tolerance time.Duration) error {
	var ts, sig string
	for _, part := range bytes.Split([]byte(header), []byte(",")) {
		k, v, _ := bytes.Cut(part, []byte("="))
		switch string(k) {
		case "t":
			ts = string(v)
		case "v1":
			sig = string(v)
		}
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return fmt.Errorf("webhook: no timestamp in the signature")
	}
	if d := now.Sub(time.Unix(sec, 0)); d > tolerance || d < -tolerance {
		return fmt.Errorf("webhook: signed %s from now", d.Round(time.Second))
	}
	got, err := hex.DecodeString(sig)
	if err != nil || !hmac.Equal(got, mac(secret, ts, body)) {
		return fmt.Errorf("webhook: the signature does not match")
	}
	return nil
}
