package queue

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
)

// The spool is three folders under Config.Dir:
//
//	journal/  messages (up to Config.InlineMax) that await their first
//	          delivery attempt, many to a file (journal.go)
//	tmp/      drafts being written to a file; anything left here at start
//	          is garbage
//	msg/      ID.data: the message as received, then its envelope (a
//	          trailer, below); ID.env, once delivery has changed the
//	          envelope: the current one, which wins over the trailer
//
// A message is committed to the journal when it is small, or else to
// msg/: ID.data is renamed there only when complete and fsynced, and it is
// removed before ID.env, so an .env always has its data. A journal message
// still pending after its first attempt moves to msg/ as ID.data with its
// state at that time as the trailer. A message in both places (a crash
// between the move and the journal's record of it) is the one in msg/.
//
// The trailer is "\n", the envelope as one line of JSON, "\n", and a
// footer of fixed length that gives the trailer's length:
//
//	<data><LF><JSON><LF>0000000123 smarthost-envelope<LF>
const footerTag = " smarthost-envelope\n"

const footerLen int64 = 10 + int64(len(footerTag))

// writeTrailer appends m's envelope to its data (see the spool's layout).
func writeTrailer(w io.Writer, m *Message) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "\n%s\n%010d%s", b, len(b)+2, footerTag)
	return err
}

// readTrailer reads the envelope from the end of a message's data (size
// bytes in all, trailer included).
func readTrailer(f io.ReaderAt, size int64, id string) (*Message, error) {
	var foot [footerLen]byte
	if size < footerLen {
		return nil, fmt.Errorf("queue: %s.data has no envelope", id)
	}
	if _, err := f.ReadAt(foot[:], size-footerLen); err != nil {
		return nil, fmt.Errorf("queue: read %s.data: %w", id, err)
	}
	n, err := strconv.ParseInt(string(foot[:10]), 10, 64)
	if err != nil || string(foot[10:]) != footerTag || n < 2 || n > size-footerLen {
		return nil, fmt.Errorf("queue: %s.data has no envelope", id)
	}
	b := make([]byte, n)
	if _, err := f.ReadAt(b, size-footerLen-n); err != nil {
		return nil, fmt.Errorf("queue: read %s.data: %w", id, err)
	}
	if b[0] != '\n' || b[n-1] != '\n' {
		return nil, fmt.Errorf("queue: %s.data has no envelope", id)
	}
	m := &Message{}
	if err := json.Unmarshal(b[1:n-1], m); err != nil {
		return nil, fmt.Errorf("queue: decode %s.data: %w", id, err)
	}
	if m.Size != size-footerLen-n {
		return nil, fmt.Errorf("queue: %s.data: envelope says %d bytes of data, file has %d", id, m.Size, size-footerLen-n)
	}
	return m, nil
}

// writeFileSync writes a small file whole and syncs it.
func writeFileSync(dsk disk, path string, b []byte, flag int) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|flag, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	if err := dsk.fsync(f); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	return f.Close()
}
