package main

// The configuration file of `rbee node run`: TOML whose top-level keys are the
// command's flag names, read before the command runs. Its keys are derived
// from the flag definitions, so a flag added to the command is a key of the
// file with nothing else to change.
//
// Precedence is flag > environment variable > file > default: the file only
// sets flags that neither the command line nor their RBEE_* variable set.
// urfave/cli's altsrc gets that order right too, but it reports no file
// positions, ignores unknown keys and wants every flag wrapped in a second
// type; hence this file.
//
// The file is decoded by github.com/pelletier/go-toml/v2, into a struct built
// from the flags, in strict mode: the decoder reports syntax errors, repeated
// keys, unknown keys and values of the wrong type with their line, and the
// key, which a hand-written parser would have to match with TOML's whole
// grammar (quoting, escapes, multi-line arrays, dotted keys) to do as well.

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/pelletier/go-toml/v2"
	"github.com/pelletier/go-toml/v2/unstable"
	"github.com/urfave/cli/v2"
)

func configFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "config", EnvVars: []string{"RBEE_CONFIG"}, TakesFile: true,
			Usage: "TOML file of flag values, keyed by flag name (flags and RBEE_* variables override it)"},
		&cli.BoolFlag{Name: "print-config",
			Usage: "print the configuration in effect (file, environment, flags, defaults) as TOML, secrets masked, and exit"},
	}
}

// notInFile are the flags that are not configuration: how to read the file,
// what to do with it, help.
var notInFile = map[string]bool{"config": true, "print-config": true, "help": true}

// secretKeys are the keys --print-config masks. The key file's path is no
// secret: it names the file, not its content.
var secretKeys = map[string]bool{"cluster-key": true, "api-key": true}

const masked = "****"

// valueKind is what a key's value is in the file, after its flag's type.
type valueKind int

const (
	kindString valueKind = iota // also any flag type not below: set through its own parser
	kindList
	kindInt
	kindUint
	kindFloat
	kindBool
	kindDuration // a string that time.ParseDuration reads
)

func kindOf(f cli.Flag) valueKind {
	switch f.(type) {
	case *cli.StringSliceFlag:
		return kindList
	case *cli.IntFlag, *cli.Int64Flag:
		return kindInt
	case *cli.UintFlag, *cli.Uint64Flag:
		return kindUint
	case *cli.Float64Flag:
		return kindFloat
	case *cli.BoolFlag:
		return kindBool
	case *cli.DurationFlag:
		return kindDuration
	}
	return kindString
}

var kindType = [...]reflect.Type{
	kindString:   reflect.TypeFor[string](),
	kindList:     reflect.TypeFor[[]string](),
	kindInt:      reflect.TypeFor[int64](),
	kindUint:     reflect.TypeFor[uint64](),
	kindFloat:    reflect.TypeFor[float64](),
	kindBool:     reflect.TypeFor[bool](),
	kindDuration: reflect.TypeFor[string](),
}

// kindWant says what a key wants, in TOML's words.
var kindWant = [...]string{
	kindString:   "a string",
	kindList:     "an array of strings",
	kindInt:      "an integer",
	kindUint:     "a non-negative integer",
	kindFloat:    "a float",
	kindBool:     "a boolean",
	kindDuration: `a duration string such as "30s"`,
}

// value is the flag's value in c, typed as kindType.
func (k valueKind) value(c *cli.Context, name string) any {
	switch k {
	case kindList:
		return c.StringSlice(name)
	case kindInt:
		return c.Int64(name)
	case kindUint:
		return c.Uint64(name)
	case kindFloat:
		return c.Float64(name)
	case kindBool:
		return c.Bool(name)
	case kindDuration:
		return c.Duration(name).String()
	}
	return c.String(name)
}

// flagValues turns a decoded value (kindType) into what the flag's Set takes,
// one string per call.
func (k valueKind) flagValues(v reflect.Value) ([]string, error) {
	switch k {
	case kindList:
		return v.Interface().([]string), nil
	case kindDuration:
		s := v.String()
		if _, err := time.ParseDuration(s); err != nil {
			return nil, fmt.Errorf("%q is not a duration (want a number and a unit: \"30s\", \"1m30s\", \"500ms\")", s)
		}
		return []string{s}, nil
	}
	return []string{fmt.Sprint(v.Interface())}, nil
}

// fileKey is one key of the file: a flag's name and the kind of its value.
type fileKey struct {
	name string
	kind valueKind
}

// schema is the file's shape for one command.
type schema struct {
	keys []fileKey
	typ  reflect.Type // a struct with a pointer field per key, tagged with its name
}

func newSchema(flags []cli.Flag) schema {
	var s schema
	var fields []reflect.StructField
	for _, f := range flags {
		name := f.Names()[0]
		if notInFile[name] {
			continue
		}
		k := fileKey{name: name, kind: kindOf(f)}
		fields = append(fields, reflect.StructField{
			Name: "F" + strconv.Itoa(len(s.keys)),
			Type: reflect.PointerTo(kindType[k.kind]),
			Tag:  reflect.StructTag(`toml:"` + name + `"`),
		})
		s.keys = append(s.keys, k)
	}
	s.typ = reflect.StructOf(fields)
	return s
}

func (s schema) key(name string) (fileKey, bool) {
	for _, k := range s.keys {
		if k.name == name {
			return k, true
		}
	}
	return fileKey{}, false
}

// setting is one key the file sets, as flag values.
type setting struct {
	name   string
	line   int
	values []string
}

// read decodes the file at path into the settings it holds, in flag order.
func (s schema) read(path string) ([]setting, error) {
	doc, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config file: %w", err)
	}
	v := reflect.New(s.typ)
	dec := toml.NewDecoder(bytes.NewReader(doc))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v.Interface()); err != nil {
		return nil, s.decodeError(path, doc, err)
	}
	lines := keyLines(doc)
	var out []setting
	var errs []error
	for i, k := range s.keys {
		f := v.Elem().Field(i)
		if f.IsNil() {
			continue
		}
		st := setting{name: k.name, line: lines[k.name]}
		if st.values, err = k.kind.flagValues(f.Elem()); err != nil {
			errs = append(errs, fmt.Errorf("%s:%d: key %q: %w", path, st.line, k.name, err))
		}
		out = append(out, st)
	}
	return out, errors.Join(errs...)
}

// keyLines returns the line of each top-level key of doc (which has decoded
// without error).
func keyLines(doc []byte) map[string]int {
	var p unstable.Parser
	p.Reset(doc)
	lines := map[string]int{}
	for p.NextExpression() {
		e := p.Expression()
		if e.Kind != unstable.KeyValue {
			break // a table: no flag keys after it
		}
		it := e.Key()
		it.Next()
		lines[string(it.Node().Data)] = p.Shape(it.Node().Raw).Start.Line
	}
	return lines
}

// tomlMismatch is go-toml's message for a value of the wrong type: what the
// file holds ("string", "inline table"), and last the Go type it was to go
// into ("[]string", or "string" for an array's element).
var tomlMismatch = regexp.MustCompile(`^cannot decode TOML ([a-z -]+?) into .*?(\S+)$`)

// decodeError rewrites a go-toml error as "path:line: ...", naming the key.
func (s schema) decodeError(path string, doc []byte, err error) error {
	var strict *toml.StrictMissingError
	if errors.As(err, &strict) {
		errs := make([]error, len(strict.Errors))
		for i := range strict.Errors {
			errs[i] = s.unknownKey(path, doc, &strict.Errors[i])
		}
		return errors.Join(errs...)
	}
	var de *toml.DecodeError
	if !errors.As(err, &de) {
		return fmt.Errorf("%s: %w", path, err)
	}
	line, _ := de.Position()
	msg := strings.TrimPrefix(de.Error(), "toml: ")
	name := strings.Join(de.Key(), ".")
	k, ok := s.key(name)
	if !ok {
		return fmt.Errorf("%s:%d: %s", path, line, msg)
	}
	if m := tomlMismatch.FindStringSubmatch(msg); m != nil {
		got := withArticle(m[1])
		if k.kind == kindList && !strings.Contains(m[2], "[]") {
			got = "an array holding " + got
		}
		msg = fmt.Sprintf("want %s, got %s", kindWant[k.kind], got)
	}
	return fmt.Errorf("%s:%d: key %q: %s", path, line, name, msg)
}

// unknownKey words a strict-mode error: a key or a table no flag has.
func (s schema) unknownKey(path string, doc []byte, e *toml.DecodeError) error {
	line, _ := e.Position()
	name := strings.Join(e.Key(), ".")
	if isTableHeader(doc, line) {
		return fmt.Errorf("%s:%d: unknown table %q: the file has no tables, only flag names as top-level keys", path, line, name)
	}
	if near := s.nearest(name); near != "" {
		return fmt.Errorf("%s:%d: unknown key %q (did you mean %q?)", path, line, name, near)
	}
	return fmt.Errorf("%s:%d: unknown key %q", path, line, name)
}

// isTableHeader reports whether line (1-based) of doc is a [table] or
// [[array of tables]] header.
func isTableHeader(doc []byte, line int) bool {
	ls := bytes.Split(doc, []byte("\n"))
	return line >= 1 && line <= len(ls) && bytes.HasPrefix(bytes.TrimSpace(ls[line-1]), []byte("["))
}

// nearest returns the key closest to name, if a typo away (two edits at most).
func (s schema) nearest(name string) string {
	best, bestD := "", 3
	for _, k := range s.keys {
		if d := editDistance(name, k.name); d < bestD {
			best, bestD = k.name, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

func withArticle(s string) string {
	if strings.ContainsRune("aeiou", rune(s[0])) {
		return "an " + s
	}
	return "a " + s
}

// applyConfigFile is `node run`'s Before: it reads --config (or RBEE_CONFIG)
// and sets each flag the file names that neither the command line nor the
// environment set.
func applyConfigFile(c *cli.Context) error {
	path := c.String("config")
	if path == "" {
		return nil
	}
	settings, err := newSchema(c.Command.Flags).read(path)
	if err != nil {
		return err
	}
	for _, st := range settings {
		if c.IsSet(st.name) {
			continue
		}
		for _, v := range st.values {
			if err := c.Set(st.name, v); err != nil {
				return fmt.Errorf("%s:%d: key %q: %w", path, st.line, st.name, err)
			}
		}
	}
	return nil
}

// printConfig writes the command's flag values as the file would hold them,
// secrets masked. resolved holds values the command works out for itself
// when a flag is unset (the listen addresses), by key.
func printConfig(w io.Writer, c *cli.Context, resolved map[string]string) error {
	s := newSchema(c.Command.Flags)
	v := reflect.New(s.typ).Elem()
	for i, k := range s.keys {
		val := k.kind.value(c, k.name)
		if r, ok := resolved[k.name]; ok {
			val = r
		}
		if secretKeys[k.name] {
			val = mask(val)
		}
		p := reflect.New(kindType[k.kind])
		p.Elem().Set(reflect.ValueOf(val))
		v.Field(i).Set(p)
	}
	b, err := toml.Marshal(v.Interface())
	if err != nil {
		return fmt.Errorf("print config: %w", err)
	}
	_, err = w.Write(b)
	return err
}

// mask hides a secret's value, keeping whether it is set and how many there
// are.
func mask(v any) any {
	switch v := v.(type) {
	case string:
		if v != "" {
			return masked
		}
	case []string:
		out := make([]string, len(v))
		for i := range out {
			out[i] = masked
		}
		return out
	}
	return v
}
