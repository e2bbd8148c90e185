package verbs

import (
	"strings"
	"testing"
)

// Only a command whose first word is exactly a verb is claimed by berth;
// anything else runs in the user's container untouched. ("env prune"
// runs a program called prune.)
func FuzzLookup(f *testing.F) {
	for _, s := range []string{"status --json", "  stop --rm", "env prune", "statuses", "admin who", "", "rebuild\t--no-cache", "STATUS", "status\x00"} {
		f.Add(s)
	}
	names := map[string]bool{}
	for _, v := range table() {
		names[v.name] = true
	}
	b := (&Handler{}).For(Caller{})
	f.Fuzz(func(t *testing.T, command string) {
		_, ok := b.Lookup(command)
		fields := strings.Fields(command)
		want := len(fields) > 0 && names[fields[0]]
		if ok != want {
			t.Fatalf("Lookup(%q) = %v, want %v", command, ok, want)
		}
	})
}
