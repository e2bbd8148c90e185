package sessions

import (
	"errors"
	"io"
	"os"
	"syscall"
)

// ttyReader reads a PTY master in as few pieces as it can without waiting:
// the line discipline hands out at most a few KiB per read, and each read
// would become its own SSH packet. After the first read it keeps reading
// while the terminal has more at once, and stops at the first "nothing
// now", so interactive output is never held back.
type ttyReader struct{ f *os.File }

func (t ttyReader) Read(p []byte) (int, error) {
	rc, err := t.f.SyscallConn()
	if err != nil {
		return t.f.Read(p)
	}
	n, first := 0, true
	var rerr error
	err = rc.Read(func(fd uintptr) bool {
		for n < len(p) {
			m, err := syscall.Read(int(fd), p[n:])
			if m > 0 {
				n += m
			}
			switch {
			case errors.Is(err, syscall.EAGAIN):
				// Nothing now: wait for the poller only if nothing came yet.
				return !first || n > 0
			case err != nil:
				rerr = err
				return true
			case m == 0:
				rerr = io.EOF
				return true
			}
			first = false
		}
		return true
	})
	if n > 0 {
		return n, nil
	}
	if rerr != nil {
		return 0, rerr
	}
	return 0, err
}
