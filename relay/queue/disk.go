package queue

import (
	"os"
	"syscall"
)

// disk is the file operations on which the spool's durability rests:
// making a file, naming it, and the syncs that make its bytes and its name
// survive a power cut. A message is acknowledged only after the syncs
// that cover it have returned (docs/reliability.md says which). They go
// through this interface so that a test can watch their order against the
// acknowledgements (durability_test.go); reading, writing and removing
// call package os directly.
type disk interface {
	// create makes a new file for writing (O_EXCL).
	create(path string, flag int) (*os.File, error)
	rename(from, to string) error
	// fsync makes a file's bytes and metadata durable; fdatasync its
	// bytes and size only (what a journal append needs: one write less
	// to the file system's journal).
	fsync(f *os.File) error
	fdatasync(f *os.File) error
	// syncDir makes the names in a folder durable: a file created or
	// renamed there.
	syncDir(dir string) error
}

// ondisk is how a spool is kept: the file operations it makes durable
// through, and the size at which a journal file is left for a new one.
// A running relay's is realDisk; a test watches another.
type ondisk struct {
	disk       disk
	journalMax int64
}

var realDisk = ondisk{osDisk{}, journalFileMax}

// osDisk is the disk of a running relay.
type osDisk struct{}

func (osDisk) create(path string, flag int) (*os.File, error) {
	return os.OpenFile(path, os.O_CREATE|os.O_EXCL|flag, 0o600)
}

func (osDisk) rename(from, to string) error { return os.Rename(from, to) }

func (osDisk) fsync(f *os.File) error { return f.Sync() }

func (osDisk) fdatasync(f *os.File) error {
	for {
		err := syscall.Fdatasync(int(f.Fd()))
		if err != syscall.EINTR {
			return err
		}
	}
}

func (osDisk) syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
