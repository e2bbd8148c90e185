// Package environment describes the image users' containers are made
// from: a Dockerfile, its build context and its build args. The default,
// the seed's environment rewritten for berth, is embedded in the binary.
//
//	env, err := environment.Load(cfg.Environment.Dockerfile, cfg.Environment.BuildArgs)
//	tag := env.Tag() // berth-env:<content hash>
//	ctx := env.Context() // a tar stream for the Docker build API
package environment

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

//go:embed default
var defaultFS embed.FS

// Default returns the embedded default environment's files.
func Default() fs.FS {
	sub, err := fs.Sub(defaultFS, "default")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	return sub
}

// Environment is one buildable image definition.
type Environment struct {
	// Name says where it came from, for messages: "default" or a path.
	Name string
	// Args are the build args.
	Args map[string]string
	// Dockerfile is the Dockerfile's name within the context.
	Dockerfile string
	// Image, when set, is an existing local image used as it is: there is
	// nothing to build.
	Image string

	files []file
}

type file struct {
	name string
	mode fs.FileMode
	data []byte
}

// Repository is the image repository berth tags environments in.
const Repository = "berth-env"

// Load reads an environment. An empty dockerfile means the embedded
// default; otherwise the Dockerfile's directory is the build context.
func Load(dockerfile string, args map[string]string) (*Environment, error) {
	if dockerfile == "" {
		return fromFS("default", Default(), "Dockerfile", args)
	}
	if _, err := os.Stat(dockerfile); err != nil {
		return nil, fmt.Errorf("environment.dockerfile: %w", err)
	}
	return fromFS(dockerfile, os.DirFS(filepath.Dir(dockerfile)), filepath.Base(dockerfile), args)
}

func fromFS(name string, fsys fs.FS, dockerfile string, args map[string]string) (*Environment, error) {
	env := &Environment{Name: name, Args: args, Dockerfile: dockerfile}
	err := fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		data, err := fs.ReadFile(fsys, p)
		if err != nil {
			return err
		}
		mode := fs.FileMode(0o644)
		if info.Mode()&0o111 != 0 || path.Ext(p) == ".sh" {
			mode = 0o755
		}
		env.files = append(env.files, file{name: p, mode: mode, data: data})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read environment %s: %w", name, err)
	}
	return env, nil
}

// maxRepoContext bounds a repo build context, which berth holds in memory
// to hash and send.
const maxRepoContext = 256 << 20

// LoadRepo reads an environment from a user's repository: its
// .berth/Dockerfile, with the repository as the build context. berth is
// root on the host and the tree is the user's, who may change it while
// berth reads it, so nothing in it is reached by path: each entry is opened
// relative to its parent's descriptor without following symlinks, and a
// file counts only if it is a regular file owned by uid (so a hard link to
// another user's file stays out). .git is skipped.
func LoadRepo(dir string, uid int, args map[string]string) (*Environment, error) {
	const dockerfile = ".berth/Dockerfile"
	env := &Environment{Name: filepath.Join(dir, dockerfile), Args: args, Dockerfile: dockerfile}
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", dir, err)
	}
	budget := int64(maxRepoContext)
	if err := env.readTree(fd, "", uid, &budget); err != nil {
		return nil, fmt.Errorf("read %s: %w", env.Name, err)
	}
	return env, nil
}

// readTree adds the regular files uid owns below the directory dirfd,
// which it closes, to e's context, spending budget bytes.
func (e *Environment) readTree(dirfd int, rel string, uid int, budget *int64) error {
	d := os.NewFile(uintptr(dirfd), rel)
	defer d.Close()
	entries, err := d.ReadDir(-1)
	if err != nil {
		return err
	}
	// In name order, as the image tag hashes the files in order.
	slices.SortFunc(entries, func(a, b fs.DirEntry) int { return strings.Compare(a.Name(), b.Name()) })
	for _, entry := range entries {
		name := entry.Name()
		if name == ".git" {
			continue
		}
		fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
		if err != nil {
			continue // a symlink (ELOOP), or gone meanwhile
		}
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			unix.Close(fd)
			continue
		}
		child := path.Join(rel, name)
		switch {
		case st.Mode&unix.S_IFMT == unix.S_IFDIR:
			if err := e.readTree(fd, child, uid, budget); err != nil {
				return err
			}
		case st.Mode&unix.S_IFMT == unix.S_IFREG && int(st.Uid) == uid:
			f := os.NewFile(uintptr(fd), child)
			if *budget -= st.Size; *budget < 0 {
				f.Close()
				return fmt.Errorf("the repository is over %d MiB, too big for a build context", maxRepoContext>>20)
			}
			data, err := io.ReadAll(io.LimitReader(f, st.Size))
			f.Close()
			if err != nil {
				return err
			}
			mode := fs.FileMode(0o644)
			if st.Mode&0o111 != 0 {
				mode = 0o755
			}
			e.files = append(e.files, file{name: child, mode: mode, data: data})
		default:
			unix.Close(fd)
		}
	}
	return nil
}

// Prebuilt is an environment that is an existing local image, used as it
// is (a user's image: setting).
func Prebuilt(image string) *Environment { return &Environment{Name: image, Image: image} }

// Tag is the image tag for this environment: a hash of every file in the
// context and every build arg, so any change to them means a new image; or
// a prebuilt environment's own image.
func (e *Environment) Tag() string {
	if e.Image != "" {
		return e.Image
	}
	h := sha256.New()
	fmt.Fprintf(h, "berth-environment-v1 %q\n", e.Dockerfile)
	for _, f := range e.files {
		fmt.Fprintf(h, "file %q %o %d\n", f.name, f.mode, len(f.data))
		h.Write(f.data)
	}
	for _, k := range slices.Sorted(maps.Keys(e.Args)) {
		fmt.Fprintf(h, "arg %q %q\n", k, e.Args[k])
	}
	return Repository + ":" + hex.EncodeToString(h.Sum(nil))[:16]
}

// Lineage names the environment apart from its files: where its
// Dockerfile is and its build args. Builds of one lineage replace each
// other as the Dockerfile is edited, so older ones can be removed.
func (e *Environment) Lineage() string {
	h := sha256.New()
	fmt.Fprintf(h, "%q %q\n", e.Name, e.Dockerfile)
	for _, k := range slices.Sorted(maps.Keys(e.Args)) {
		fmt.Fprintf(h, "arg %q %q\n", k, e.Args[k])
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// Context returns the build context as a tar stream.
func (e *Environment) Context() io.Reader {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range e.files {
		// Writes to a bytes.Buffer cannot fail.
		tw.WriteHeader(&tar.Header{Name: f.name, Mode: int64(f.mode), Size: int64(len(f.data)), Typeflag: tar.TypeReg})
		tw.Write(f.data)
	}
	tw.Close()
	return &buf
}

// BuildArgs returns the args in the form the Docker API takes.
func (e *Environment) BuildArgs() map[string]*string {
	out := make(map[string]*string, len(e.Args))
	for k, v := range e.Args {
		out[k] = &v
	}
	return out
}

// String names the environment for messages.
func (e *Environment) String() string {
	if e.Name == "default" {
		return "the default environment"
	}
	return e.Name
}
