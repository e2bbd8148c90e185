package config

import (
	"os"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// referencePath is the operators' configuration reference.
const referencePath = "../docs/configuration.md"

// TestConfigurationReferenceNamesEveryKey keeps docs/configuration.md in
// step with the schema: every key Decode accepts has a row in one of its
// key tables, and every row names a key Decode still accepts.
func TestConfigurationReferenceNamesEveryKey(t *testing.T) {
	accepted := map[string]bool{}
	yamlKeys(t, reflect.TypeFor[Config](), "", accepted)
	if len(accepted) < 20 {
		t.Fatalf("found only %d keys in Config; the walk is broken: %v", len(accepted), sorted(accepted))
	}
	doc, err := os.ReadFile(referencePath)
	if err != nil {
		t.Fatal(err)
	}
	documented := documentedKeys(t, string(doc))
	for _, k := range sorted(accepted) {
		if !documented[k] {
			t.Errorf("%s has no row for `%s`, which config.Config accepts", referencePath, k)
		}
	}
	for _, k := range sorted(documented) {
		if !accepted[k] {
			t.Errorf("%s has a row for `%s`, which config.Config does not accept", referencePath, k)
		}
	}
}

// mapKey stands for the key of a map of structs, as in
// environments.NAME.dockerfile.
const mapKey = "NAME"

// yamlKeys adds to keys the full path of every key that t accepts in YAML,
// such as "shm_size", "users[].uid" and "environments.NAME.dockerfile",
// following yaml.v3's rules: a field is named by its yaml tag, else by its
// lowercased Go name; "-" and unexported fields are skipped; an ",inline"
// struct's keys belong to the struct around it.
func yamlKeys(t *testing.T, typ reflect.Type, prefix string, keys map[string]bool) {
	t.Helper()
	for typ.Kind() == reflect.Pointer {
		typ = typ.Elem()
	}
	for i := range typ.NumField() {
		f := typ.Field(i)
		if !f.IsExported() {
			continue
		}
		name, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "-" {
			continue
		}
		if hasOption(opts, "inline") {
			ft := deref(f.Type)
			if ft.Kind() != reflect.Struct {
				t.Fatalf("%s%s: only inline structs are supported by this test", prefix, f.Name)
			}
			yamlKeys(t, ft, prefix, keys)
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		key := prefix + name
		keys[key] = true
		switch ft := deref(f.Type); ft.Kind() {
		case reflect.Struct:
			if nested(ft) {
				yamlKeys(t, ft, key+".", keys)
			}
		case reflect.Slice, reflect.Array:
			if elem := deref(ft.Elem()); nested(elem) {
				yamlKeys(t, elem, key+"[].", keys)
			}
		case reflect.Map:
			if elem := deref(ft.Elem()); nested(elem) {
				yamlKeys(t, elem, key+"."+mapKey+".", keys)
			}
		}
	}
}

func deref(t reflect.Type) reflect.Type {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return t
}

// nested reports whether t is a struct whose fields are YAML keys, rather
// than a value that decodes itself.
func nested(t reflect.Type) bool {
	unmarshaler := reflect.TypeFor[yaml.Unmarshaler]()
	return t.Kind() == reflect.Struct && !reflect.PointerTo(t).Implements(unmarshaler) && !t.Implements(unmarshaler)
}

func hasOption(opts, want string) bool {
	for _, o := range strings.Split(opts, ",") {
		if o == want {
			return true
		}
	}
	return false
}

// keyCell is a key table's first cell: one key in backticks.
var keyCell = regexp.MustCompile("^`([^`]+)`$")

// documentedKeys returns the keys in the reference's key tables: the
// Markdown tables whose first column is headed "Key". Each row's first
// cell must be exactly one key in backticks.
func documentedKeys(t *testing.T, doc string) map[string]bool {
	t.Helper()
	keys := map[string]bool{}
	inTable := false
	tables := 0
	for n, line := range strings.Split(doc, "\n") {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, "|") {
			inTable = false
			continue
		}
		first, _, _ := strings.Cut(line[1:], "|")
		first = strings.TrimSpace(first)
		if first == "Key" {
			inTable = true
			tables++
			continue
		}
		if !inTable || strings.Trim(first, "-: ") == "" {
			continue
		}
		m := keyCell.FindStringSubmatch(first)
		if m == nil {
			t.Errorf("%s:%d: a key table's first cell must be one key in backticks, not %q", referencePath, n+1, first)
			continue
		}
		if keys[m[1]] {
			t.Errorf("%s:%d: `%s` has a second row", referencePath, n+1, m[1])
		}
		keys[m[1]] = true
	}
	if tables == 0 {
		t.Fatalf("%s has no key tables (tables whose first column is headed Key)", referencePath)
	}
	return keys
}

func sorted(set map[string]bool) []string {
	out := make([]string, 0, len(set))
	for k := range set {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
