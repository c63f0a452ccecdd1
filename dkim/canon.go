package dkim

import (
	"bytes"
	"io"
	"strings"
)

// relaxedBody is the "relaxed" body canonicalization of RFC 6376 section
// 3.4.4, streaming into w: runs of WSP within a line become one SP, WSP at
// the end of a line goes, empty lines at the end of the body go, and a
// non-empty body ends with exactly one CRLF. Runs of ordinary bytes are
// passed on in one write each, not byte by byte. As go-msgauth's (which
// verifiers were checked against), a bare LF counts as CRLF and a bare CR
// as a line-end byte; the relay's messages have neither.
type relaxedBody struct {
	w       io.Writer
	pending []byte // line-end bytes since the last content, not yet written
	wsp     bool   // WSP seen since the last content on this line
	cr      bool   // the byte before was a CR
	started bool   // content written: the body is not empty
}

// content writes a run of ordinary bytes, after what is pending before it.
func (c *relaxedBody) content(run []byte) {
	if len(c.pending) > 0 {
		c.w.Write(c.pending)
		c.pending = c.pending[:0]
	}
	if c.wsp {
		c.w.Write(space)
		c.wsp = false
	}
	c.w.Write(run)
	c.started = true
	c.cr = false
}

var space, crlf = []byte{' '}, []byte("\r\n")

// special marks the bytes relaxed canonicalization treats specially.
var special = [256]bool{' ': true, '\t': true, '\r': true, '\n': true}

func (c *relaxedBody) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		i := 0
		for i < len(p) && !special[p[i]] {
			i++
		}
		if i > 0 {
			c.content(p[:i])
			if i == len(p) {
				break
			}
		}
		switch b := p[i]; b {
		case ' ', '\t':
			c.wsp = true
		case '\r':
			c.wsp = false
			c.pending = append(c.pending, '\r')
		case '\n':
			c.wsp = false
			if !c.cr {
				c.pending = append(c.pending, '\r')
			}
			c.pending = append(c.pending, '\n')
		}
		c.cr = p[i] == '\r'
		p = p[i+1:]
	}
	return n, nil
}

// end finishes the body: the last line's end, if there was any content.
func (c *relaxedBody) end() {
	if c.started {
		c.w.Write(crlf)
	}
}

// relaxedHeader is the "relaxed" canonical form of one header field (RFC
// 6376 section 3.4.2): the name in lower case, the value unfolded, runs of
// WSP made one SP, WSP around the colon and at the end removed.
func relaxedHeader(field []byte) string {
	name, value, _ := bytes.Cut(field, []byte(":"))
	var b strings.Builder
	b.Grow(len(field))
	b.WriteString(strings.ToLower(strings.TrimRight(string(name), " \t")))
	b.WriteByte(':')
	wsp := false
	for _, c := range bytes.TrimLeft(value, " \t\r\n") {
		switch c {
		case '\r', '\n':
			continue
		case ' ', '\t':
			wsp = true
			continue
		}
		if wsp {
			b.WriteByte(' ')
			wsp = false
		}
		b.WriteByte(c)
	}
	b.WriteString("\r\n")
	return b.String()
}

// splitFields splits a header block (without its ending empty line) into
// fields, each with its continuation lines and its CRLF.
func splitFields(h []byte) [][]byte {
	var out [][]byte
	for len(h) > 0 {
		end := 0
		for {
			i := bytes.IndexByte(h[end:], '\n')
			if i < 0 {
				end = len(h)
				break
			}
			end += i + 1
			if end == len(h) || (h[end] != ' ' && h[end] != '\t') {
				break
			}
		}
		out = append(out, h[:end])
		h = h[end:]
	}
	return out
}
