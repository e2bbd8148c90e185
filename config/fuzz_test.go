package config

import (
	"strings"
	"testing"
)

// Any config file decodes without panicking, and one that decodes keeps
// the promises the rest of berth relies on: valid, unique user names, a
// state_dir short enough for sockets, and no mount of a Docker socket or
// of berth's own directories.
func FuzzDecode(f *testing.F) {
	f.Add("listen: \":2222\"\nusers:\n  - name: alice\n    uid: 1000\n")
	f.Add("mounts: [\"/datasets:/datasets:ro\", \"/m/{user}:/models\"]\nusers:\n  - name: bob\n    mounts: [\"/x:/y\"]\n")
	f.Add("repo: {url: git@host:lab/x.git, branch: main}\npython_packages: [torch]\nusers:\n  - name: c\n    repo_dockerfile: true\n")
	f.Add("gpus: \"2\"\ngpu_mode: exclusive\nshm_size: 8g\nmax_startups: 10:30:100\n")
	f.Fuzz(func(t *testing.T, data string) {
		cfg, err := Decode(strings.NewReader(data), "/etc/berth")
		if err != nil {
			return
		}
		if len(cfg.StateDir) > MaxStateDir {
			t.Fatalf("state_dir %q is longer than %d", cfg.StateDir, MaxStateDir)
		}
		seen := map[string]bool{}
		for _, u := range cfg.Users {
			if !ValidName(u.Name) || seen[u.Name] {
				t.Fatalf("user name %q accepted", u.Name)
			}
			seen[u.Name] = true
			for _, m := range cfg.MountsFor(u) {
				if strings.Contains(m.Source, "docker.sock") || within(cfg.StateDir, m.Source) || within(m.Source, cfg.DataRoot) {
					t.Fatalf("mount %+v accepted for %s", m, u.Name)
				}
			}
		}
	})
}

// Nothing in a login name reaches a path or a Docker name unless it is
// plain: a name SplitLogin accepts has no path separator, dot-dot, space,
// control character or upper case, and is short.
func FuzzSplitLogin(f *testing.F) {
	for _, s := range []string{"alice", "alice+exp", "../root", "alice+", "a/b", "Alice", "alice+Exp-1", "x+y+z", "\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, login string) {
		user, instance, ok := SplitLogin(login)
		if !ok {
			return
		}
		for _, part := range []string{user, instance} {
			if strings.ContainsAny(part, "/\\. :\x00\t\n") || strings.ToLower(part) != part || len(part) > 32 {
				t.Fatalf("SplitLogin(%q) accepted %q", login, part)
			}
		}
		if user == "" || (instance == "" && strings.Contains(login, "+")) {
			t.Fatalf("SplitLogin(%q) = %q, %q", login, user, instance)
		}
	})
}
