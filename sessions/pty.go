package sessions

import (
	"encoding/binary"

	"golang.org/x/crypto/ssh"

	"github.com/berth-ssh/berth/agent"
)

// parsePtyRequest decodes a pty-req payload (RFC 4254 §6.2), terminal
// modes included (§8).
func parsePtyRequest(payload []byte) (*agent.TTY, bool) {
	var p struct {
		Term          string
		Cols, Rows    uint32
		Width, Height uint32
		Modes         string
	}
	if ssh.Unmarshal(payload, &p) != nil {
		return nil, false
	}
	t := &agent.TTY{Term: p.Term, Cols: uint16(p.Cols), Rows: uint16(p.Rows), Modes: map[uint8]uint32{}}
	if t.Term == "" {
		t.Term = "xterm"
	}
	modes := []byte(p.Modes)
	for len(modes) >= 5 {
		op := modes[0]
		if op == 0 || op >= 160 { // TTY_OP_END, or opcodes without a uint32
			break
		}
		t.Modes[op] = binary.BigEndian.Uint32(modes[1:5])
		modes = modes[5:]
	}
	return t, true
}
