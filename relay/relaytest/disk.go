package relaytest

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TinyFS mounts a tmpfs of the given size ("1m", "4m") on a fresh folder
// for the test, to fill it. It needs root; without it the test is skipped
// (and fails under CI).
func TinyFS(t testing.TB, size string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		skipOrFail(t, "mounting a small tmpfs needs root")
	}
	dir, err := os.MkdirTemp("", "tinyfs-")
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size+",mode=0755", "tmpfs", dir).CombinedOutput(); err != nil {
		skipOrFail(t, "mount tmpfs: "+err.Error()+": "+string(out))
	}
	t.Cleanup(func() {
		exec.Command("umount", "-l", dir).Run()
		os.Remove(dir)
	})
	return dir
}

// Fill writes a file in dir until its file system is full, and returns
// the file's path: removing it gives the space back.
func Fill(t testing.TB, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	for {
		if _, err := f.Write(buf); err != nil {
			break
		}
	}
	// The last partial block, byte by byte.
	for {
		if _, err := f.Write(buf[:1]); err != nil {
			return path
		}
	}
}
