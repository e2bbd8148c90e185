package sessions

import (
	"bytes"
	"io"
	"strings"
	"sync"
	"unicode/utf8"
)

// statusLine shows progress on a terminal: berth's own step lines
// ("berth: built ... in 2m3s") stay on screen, while the flood of build
// output is shown as one line rewritten in place, cut to the terminal's
// width. Done clears that line before the user's program takes over.
type statusLine struct {
	w    io.Writer
	cols int

	mu      sync.Mutex
	partial []byte
	shown   bool // a status line is on screen
}

func (p *statusLine) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.partial = append(p.partial, b...)
	for {
		i := bytes.IndexByte(p.partial, '\n')
		if i < 0 {
			return len(b), nil
		}
		line := strings.TrimRight(string(p.partial[:i]), "\r")
		p.partial = p.partial[i+1:]
		if err := p.show(line); err != nil {
			return 0, err
		}
	}
}

func (p *statusLine) show(line string) error {
	const clear = "\r\x1b[K"
	if strings.HasPrefix(line, "berth: ") {
		p.shown = false
		_, err := io.WriteString(p.w, clear+line+"\r\n")
		return err
	}
	if strings.TrimSpace(line) == "" {
		return nil
	}
	p.shown = true
	_, err := io.WriteString(p.w, clear+"  "+truncate(line, p.cols-3))
	return err
}

// Done clears the status line, if one is showing.
func (p *statusLine) Done() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.shown {
		io.WriteString(p.w, "\r\x1b[K")
		p.shown = false
	}
}

// truncate cuts s to at most n runes.
func truncate(s string, n int) string {
	if n < 1 {
		n = 77
	}
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	return string([]rune(s)[:n-1]) + "…"
}
