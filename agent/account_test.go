package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// scratch lays out an image's account files in a temporary directory.
func scratch(t *testing.T, passwd, group string) accountFiles {
	t.Helper()
	dir := t.TempDir()
	f := accountFiles{
		passwd:  filepath.Join(dir, "passwd"),
		group:   filepath.Join(dir, "group"),
		shadow:  filepath.Join(dir, "shadow"),
		sudoers: filepath.Join(dir, "sudoers.d"),
		skel:    filepath.Join(dir, "skel"),
		profile: filepath.Join(dir, "profile.d"),
		pipConf: filepath.Join(dir, "pip.conf"),
		homes:   filepath.Join(dir, "home"),
	}
	os.WriteFile(f.passwd, []byte(passwd), 0o644)
	os.WriteFile(f.group, []byte(group), 0o644)
	os.WriteFile(f.shadow, []byte("root:*:19000:0:99999:7:::\n"), 0o640)
	os.Mkdir(f.sudoers, 0o755)
	os.Mkdir(f.profile, 0o755)
	os.Mkdir(f.skel, 0o755)
	os.WriteFile(filepath.Join(f.skel, ".bashrc"), []byte("# skel\n"), 0o644)
	return f
}

func read(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestProvisionReplacesAnImageUserWithTheSameUID(t *testing.T) {
	// Ubuntu images ship "ubuntu" as uid 1000; alice must be who uid 1000 is.
	f := scratch(t,
		"root:x:0:0:root:/root:/bin/bash\nubuntu:x:1000:1000::/home/ubuntu:/bin/bash\n",
		"root:x:0:\nubuntu:x:1000:\nvideo:x:44:ubuntu\n")
	a := Account{Name: "alice", UID: 1000, GID: 1000, Sudo: true}
	shell, err := provision(f, a, []string{"PATH=/usr/local/cuda/bin:/usr/bin:/bin"})
	if err != nil {
		t.Fatal(err)
	}
	passwd := read(t, f.passwd)
	if strings.Contains(passwd, "ubuntu:") || !strings.Contains(passwd, "alice:x:1000:1000:alice:/home/alice:") {
		t.Fatalf("passwd:\n%s", passwd)
	}
	if !strings.HasPrefix(passwd, "root:") {
		t.Fatal("root is no longer first")
	}
	// The existing group with that gid is kept under its own name.
	if g := read(t, f.group); strings.Count(g, ":1000:") != 1 {
		t.Fatalf("group:\n%s", g)
	}
	if s := read(t, f.shadow); !strings.Contains(s, "alice:*:") {
		t.Fatalf("shadow:\n%s", s)
	}
	if s := read(t, filepath.Join(f.sudoers, "berth")); s != "alice ALL=(ALL:ALL) NOPASSWD: ALL\n" {
		t.Fatalf("sudoers: %q", s)
	}
	if p := read(t, filepath.Join(f.profile, "00-berth-path.sh")); !strings.Contains(p, "export PATH='/usr/local/cuda/bin:/usr/bin:/bin'") {
		t.Fatalf("profile: %q", p)
	}

	if !strings.Contains(passwd, ":"+shell+"\n") {
		t.Fatalf("passwd has not the shell %s:\n%s", shell, passwd)
	}
	// The home gets the image's skeleton, owned by the user.
	bashrc := filepath.Join(f.homes, "alice", ".bashrc")
	if read(t, bashrc) != "# skel\n" {
		t.Fatal("skeleton not copied")
	}
	os.WriteFile(bashrc, []byte("# mine\n"), 0o644)

	// Provisioning again is harmless: nothing duplicated, the user's files
	// kept. Taking sudo away removes the rule.
	a.Sudo = false
	if _, err := provision(f, a, nil); err != nil {
		t.Fatal(err)
	}
	if read(t, bashrc) != "# mine\n" {
		t.Fatal("a second provision overwrote the user's .bashrc")
	}
	if strings.Count("\n"+read(t, f.passwd), "\nalice:") != 1 {
		t.Fatal("a second provision duplicated the user")
	}
	if _, err := os.Stat(filepath.Join(f.sudoers, "berth")); !os.IsNotExist(err) {
		t.Fatal("sudo rule kept after sudo was turned off")
	}
}

func TestSupplementaryGroups(t *testing.T) {
	f := scratch(t, "", "alice:x:1000:\nvideo:x:44:bob,alice\naudio:x:29:bob\n")
	got := supplementaryGroupsFrom(f.group, "alice", 1000)
	if len(got) != 2 || got[0] != 1000 || got[1] != 44 {
		t.Fatalf("got %v", got)
	}
}

// pip finds PyTorch's wheels for the container's GPUs: the variant is read
// at each start, so a container recreated on other GPUs gets another index,
// while the image stays the same.
func TestPipConfFollowsTheTorchVariant(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  []string
		want string // "" for no file
	}{
		{"nothing configured", []string{"BERTH_TORCH_VARIANT=cu124"}, ""},
		{"torch index on a GPU host", []string{"BERTH_TORCH_INDEX=https://wheels.example/whl/", "BERTH_TORCH_VARIANT=cu124"},
			"[global]\nextra-index-url = https://wheels.example/whl/cu124\n"},
		{"no GPU", []string{"BERTH_TORCH_INDEX=https://wheels.example/whl", "BERTH_TORCH_VARIANT=cpu"},
			"[global]\nextra-index-url = https://wheels.example/whl/cpu\n"},
		{"a local index too", []string{"BERTH_PYTHON_INDEX=file:///wheels/simple", "BERTH_TORCH_INDEX=https://wheels.example/whl", "BERTH_TORCH_VARIANT=cu118"},
			"[global]\nindex-url = file:///wheels/simple\nextra-index-url = https://wheels.example/whl/cu118\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := scratch(t, "root:x:0:0:root:/root:/bin/bash\n", "root:x:0:\n")
			if _, err := provision(f, Account{Name: "alice", UID: 1000, GID: 1000}, tc.env); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(f.pipConf)
			if tc.want == "" {
				if err == nil {
					t.Fatalf("pip.conf written:\n%s", got)
				}
				return
			}
			if !strings.HasSuffix(string(got), tc.want) {
				t.Fatalf("pip.conf:\n%s\nwant it to end with:\n%s", got, tc.want)
			}
		})
	}
}
