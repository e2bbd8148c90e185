package config

import (
	"strings"
	"testing"
	"time"
)

const key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ3RdwGCKnYd1y3jzPzq0FFN0E8lpG3dQz8j5UvXMpZq alice@laptop"

func TestExampleConfigLoads(t *testing.T) {
	cfg, err := Load("../config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Listen != "127.0.0.1:2222" || len(cfg.Users) != 2 || cfg.Environment.BuildArgs["BASE_IMAGE"] != "berth-base:bookworm" {
		t.Fatalf("unexpected example config: %+v", cfg)
	}
	// Relative paths are resolved against the file's directory.
	if !strings.HasSuffix(cfg.StateDir, "/.berth") || !strings.HasPrefix(cfg.StateDir, "/") {
		t.Fatalf("state_dir %q", cfg.StateDir)
	}
}

func TestDefaults(t *testing.T) {
	cfg, err := Decode(strings.NewReader(""), "/etc/berth")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Listen != ":2222" || cfg.StateDir != "/var/lib/berth" || cfg.DataRoot != "/var/lib/berth/users" ||
		!*cfg.Sudo || time.Duration(cfg.ShutdownGrace) != 30*time.Second {
		t.Fatalf("defaults: %+v", cfg)
	}
}

func TestValidationNamesTheOffendingKey(t *testing.T) {
	for _, tc := range []struct{ name, yaml, want string }{
		{"unknown top-level key", "lsiten: :22\n", `line 1: unknown key "lsiten"`},
		{"unknown user key", "users:\n  - name: a\n    authorized_keys: [\"" + key + "\"]\n    shell: zsh\n", `unknown key "shell"`},
		{"bad listen", "listen: nowhere\n", "listen:"},
		{"relative state_dir is resolved, not rejected", "state_dir: ./s\nusers: []\n", ""},
		{"state_dir too long for sockets", "state_dir: /" + strings.Repeat("x", 60) + "\n", "state_dir:"},
		{"data_root at /", "data_root: /\n", "data_root:"},
		{"bad name", "users:\n  - name: Alice\n    authorized_keys: [\"" + key + "\"]\n", "users[0].name"},
		{"name with a path in it", "users:\n  - name: ../root\n    authorized_keys: [\"" + key + "\"]\n", "users[0].name"},
		{"twice", "users:\n  - name: a\n    authorized_keys: [\"" + key + "\"]\n  - name: a\n    authorized_keys: [\"" + key + "\"]\n", "users[1].name"},
		{"bad key line", "users:\n  - name: a\n    authorized_keys: [\"ssh-ed25519 nope\"]\n", "users[0].authorized_keys[0]"},
		{"system uid", "users:\n  - name: a\n    uid: 33\n    authorized_keys: [\"" + key + "\"]\n", "users[0].uid"},
		{"gid without uid", "users:\n  - name: a\n    gid: 1000\n    authorized_keys: [\"" + key + "\"]\n", "users[0].gid"},
		{"unknown admin", "admins: [root]\n", "admins[0]"},
		{"bad duration", "shutdown_grace: forever\n", "shutdown_grace"},
		{"negative grace", "shutdown_grace: -5s\n", "shutdown_grace: must not be negative"},
		{"a CA file in a mount", "trusted_user_ca_keys: /srv/shared/ca.pub\nmounts: [\"/srv/shared:/shared:ro\"]\n", "trusted_user_ca_keys: \"/srv/shared/ca.pub\" is inside /srv/shared, which is mounted"},
		{"a key file in data_root", "data_root: /srv/users\nusers:\n  - name: a\n    authorized_keys: [/srv/users/a/home/.ssh/authorized_keys]\n", "users[0].authorized_keys[0]: \"/srv/users/a/home/.ssh/authorized_keys\" is inside data_root"},
		{"the audit log in a user's mount", "audit_log: /data/a/audit.log\nusers:\n  - name: a\n    mounts: [\"/data/a:/data\"]\n", "audit_log:"},
		{"repo_dockerfile without sudo", "repo: {url: /srv/r.git}\nusers:\n  - name: a\n    sudo: false\n    repo_dockerfile: true\n", "users[0].repo_dockerfile: it makes the user root"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Decode(strings.NewReader(tc.yaml), "/etc/berth")
			if tc.want == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error naming %q", err, tc.want)
			}
		})
	}
}

func TestLoginNames(t *testing.T) {
	for name, ok := range map[string]bool{
		"alice": true, "_svc": true, "a-b_c9": true, strings.Repeat("a", 32): true,
		"": false, "Alice": false, "9lives": false, "a.b": false, "a/b": false, "a b": false,
		"-a": false, strings.Repeat("a", 33): false, "alice+exp": false,
	} {
		if ValidName(name) != ok {
			t.Errorf("ValidName(%q) = %v", name, !ok)
		}
	}
}

func TestMountsAreCheckedAndNamed(t *testing.T) {
	base := "state_dir: /var/lib/berth\ndata_root: /srv/berth/users\n"
	for _, tc := range []struct{ mounts, want string }{
		{`["/datasets:/datasets:ro", "/models/{user}:/home/{user}/models"]`, ""},
		{`["/var/run/docker.sock:/var/run/docker.sock"]`, "mounts[0]: \"/var/run/docker.sock:/var/run/docker.sock\" would expose the Docker socket"},
		{`["/ok:/ok", "/run:/host-run"]`, "mounts[1]:"},
		{`["/:/host"]`, "Docker socket"},
		{`["/srv/docker.sock:/x"]`, "Docker socket"},
		{`["/srv:/srv"]`, "overlaps /srv/berth/users"},
		{`["/srv/berth/users/bob:/bob"]`, "overlaps"},
		{`["/var/lib/berth/run:/x"]`, "overlaps /var/lib/berth"},
		{`["/data:/.berth/run"]`, "berth's own"},
		{`["/data:/data:rx"]`, "ro or rw"},
		{`["data:/data"]`, "absolute"},
	} {
		_, err := Decode(strings.NewReader(base+"mounts: "+tc.mounts+"\n"), "/etc/berth")
		if tc.want == "" {
			if err != nil {
				t.Errorf("%s: %v", tc.mounts, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want %q", tc.mounts, err, tc.want)
		}
	}
	// A user's own mounts are checked too, and named.
	_, err := Decode(strings.NewReader("users:\n  - name: a\n    authorized_keys: [\""+key+"\"]\n    mounts: [\"/var/run:/r\"]\n"), "/etc/berth")
	if err == nil || !strings.Contains(err.Error(), "users[0].mounts[0]") {
		t.Errorf("user mount: %v", err)
	}
	// {user} is checked with each user's name: here it would mount the
	// whole of berth's state into berth's own container.
	_, err = Decode(strings.NewReader("state_dir: /srv/berth\nmounts: [\"/srv/{user}:/x\"]\nusers:\n  - name: berth\n    authorized_keys: [\""+key+"\"]\n"), "/etc/berth")
	if err == nil || !strings.Contains(err.Error(), "mounts[0]: \"/srv/{user}:/x\" overlaps /srv/berth") {
		t.Errorf("a {user} mount that reaches state_dir: %v", err)
	}
}

func TestResources(t *testing.T) {
	cfg, err := Decode(strings.NewReader("memory: 64g\ncpus: 8\nusers:\n  - name: a\n    authorized_keys: [\""+key+"\"]\n    memory: 16g\n    shm_size: 1g\n"), "/etc/berth")
	if err != nil {
		t.Fatal(err)
	}
	r := cfg.ResourcesFor(cfg.Users[0])
	if r.Memory != "16g" || r.CPUs != 8 || r.ShmSize != "1g" || r.PidsLimit != 4096 {
		t.Fatalf("resources: %+v", r)
	}
	for yaml, want := range map[string]string{"memory: lots\n": "memory:", "shm_size: -1\n": "shm_size:", "cpus: -2\n": "cpus:", "pids_limit: -5\n": "pids_limit:"} {
		if _, err := Decode(strings.NewReader(yaml), "/etc/berth"); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: got %v, want %q", yaml, err, want)
		}
	}
}
