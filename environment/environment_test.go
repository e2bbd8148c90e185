package environment

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// A repo's build context holds the user's own regular files and nothing
// a symlink, another owner's file (a hard link, say) or .git would bring.
func TestLoadRepoTakesOnlyTheUsersOwnFiles(t *testing.T) {
	const uid = 4242
	dir := t.TempDir()
	write := func(rel, content string, owner int) {
		p := filepath.Join(dir, rel)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Lchown(p, owner, owner); err != nil {
			t.Fatal(err)
		}
	}
	write(".berth/Dockerfile", "FROM scratch\n", uid)
	write("src/main.py", "print(1)\n", uid)
	write("src/roots", "not the user's\n", 0)
	write(".git/config", "[core]\n", uid)
	os.Symlink("/etc/hostname", filepath.Join(dir, "src", "link"))
	os.Symlink("/etc", filepath.Join(dir, "etc-dir"))

	env, err := LoadRepo(dir, uid, map[string]string{"A": "b"})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range env.files {
		names = append(names, f.name)
	}
	if want := []string{".berth/Dockerfile", "src/main.py"}; !slices.Equal(names, want) {
		t.Fatalf("context %v, want %v", names, want)
	}
	if env.Dockerfile != ".berth/Dockerfile" || env.Lineage() == "" {
		t.Fatalf("environment %+v", env)
	}
	// The repo directory itself must not be a symlink either.
	link := filepath.Join(t.TempDir(), "repo")
	os.Symlink(dir, link)
	if _, err := LoadRepo(link, uid, nil); err == nil {
		t.Fatal("a symlinked repo directory was read")
	}
}
