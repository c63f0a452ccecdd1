package smtpclient

import (
	"bufio"
	"bytes"
)

// dotStuffer writes a message as the content of DATA: a '.' that starts a
// line gets another in front (RFC 5321 4.5.2), a run of lines at a time
// (textproto's DotWriter goes byte by byte, which cost about 5 % of the
// relay's CPU). The last two bytes are held back, for finish to see
// whether the message ends its last line.
type dotStuffer struct {
	w    *bufio.Writer
	bol  bool // at the beginning of a line
	some bool // some of the message is written
	tail [2]byte
	n    int // bytes in tail
}

func newDotStuffer(w *bufio.Writer) *dotStuffer { return &dotStuffer{w: w, bol: true} }

func (d *dotStuffer) Write(p []byte) (int, error) {
	written := len(p)
	switch {
	case d.n+len(p) <= 2:
		d.n += copy(d.tail[d.n:], p)
		return written, nil
	case len(p) >= 2:
		d.stuff(d.tail[:d.n])
		d.stuff(p[:len(p)-2])
		d.n = copy(d.tail[:], p[len(p)-2:])
	default: // one byte, two held
		d.stuff(d.tail[:1])
		d.tail[0], d.tail[1] = d.tail[1], p[0]
	}
	// bufio.Writer keeps the first error of the connection, and an empty
	// write returns it: no point stuffing the rest of a message for it.
	_, err := d.w.Write(nil)
	return written, err
}

func (d *dotStuffer) stuff(p []byte) {
	d.some = d.some || len(p) > 0
	for len(p) > 0 {
		if d.bol && p[0] == '.' {
			d.w.WriteByte('.')
		}
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			d.w.Write(p)
			d.bol = false
			return
		}
		d.w.Write(p[:i+1])
		d.bol = true
		p = p[i+1:]
	}
}

// finish writes what is held back and the end of the data: a message
// that does not end its last line (or is empty) gets its CRLF completed,
// as textproto's DotWriter does, then the line with the dot. (Unlike DotWriter, a bare
// LF inside the message goes as it is: the relay takes none in.)
func (d *dotStuffer) finish() {
	cr := d.n > 0 && d.tail[d.n-1] == '\r'
	d.stuff(d.tail[:d.n])
	d.n = 0
	switch {
	case d.bol && d.some:
		d.w.WriteString(".\r\n")
	case cr:
		d.w.WriteString("\n.\r\n")
	default:
		d.w.WriteString("\r\n.\r\n")
	}
}
