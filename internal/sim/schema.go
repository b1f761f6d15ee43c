package sim

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"regexp"
	"regexp/syntax"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// A simulated model asked for structured output (a function call's
// arguments, or response_format's JSON schema) answers with a JSON document
// made from the schema: every property present, each of its type, within
// its bounds, an enum's value, a pattern's match where Go's regexp syntax
// can read the pattern. What it says is derived from a seed (the prompt's
// hash), so that an answer is reproducible and another prompt gets other
// values. It is an example, not an answer: the point is that a client's
// parser accepts it.
//
// Not covered: patterns Go cannot parse (lookarounds; a format's own
// example stands in), if/then/else, not, dependentSchemas,
// patternProperties, contains and minProperties. oneOf takes its first
// branch, which is valid unless the branches overlap.

const (
	// maxSchemaDepth bounds the nesting the generator follows, $refs
	// included: a deeper schema is refused.
	maxSchemaDepth = 64
	// shallowDepth is where the generator starts to end recursion (a
	// recursive $ref): from there on, arrays get their fewest items,
	// objects their required properties only, and a nullable value null.
	shallowDepth = 6
	// maxDocBytes bounds a generated document: a schema that asks for a
	// larger one (minItems in the thousands) is refused.
	maxDocBytes = 64 << 10
	// maxRefs bounds the $refs one document resolves.
	maxRefs = 4096
)

// errNoValue is a schema that no value satisfies.
var errNoValue = errors.New("schema false admits no value")

// schemaGen writes one document for a schema.
type schemaGen struct {
	root json.RawMessage
	seed uint64
	out  []byte
	refs int
	// resolved caches $ref targets, and objects the decoded objects on
	// the way to them, by their pointer: a large schema's $defs is decoded once,
	// not at every reference.
	resolved map[string]json.RawMessage
	objects  map[string]node
}

// exampleJSON returns a JSON document valid against schema (a JSON Schema:
// an object or a boolean), with values derived from seed.
func exampleJSON(schema json.RawMessage, seed uint64) ([]byte, error) {
	g := &schemaGen{root: bytes.TrimSpace(schema), seed: seed}
	if err := g.value(g.root, "", 0); err != nil {
		return nil, err
	}
	if len(g.out) > maxDocBytes {
		// Checked as values start, so one long value (a const, a
		// minLength) can pass the bound: here it is final.
		return nil, fmt.Errorf("schema asks for a document over %d bytes", maxDocBytes)
	}
	return g.out, nil
}

// node is a schema object, its keywords undecoded.
type node map[string]json.RawMessage

// rand returns the pseudo-random number for the value at path: the same
// path and seed always give the same number.
func (g *schemaGen) rand(path string) uint64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte(path))
	return mix64(g.seed ^ h.Sum64())
}

// value writes a value for schema s at path (a JSON pointer into the
// document, which seeds its value).
func (g *schemaGen) value(s json.RawMessage, path string, depth int) error {
	if depth > maxSchemaDepth {
		return fmt.Errorf("schema nested deeper than %d", maxSchemaDepth)
	}
	if len(g.out) > maxDocBytes {
		return fmt.Errorf("schema asks for a document over %d bytes", maxDocBytes)
	}
	s = bytes.TrimSpace(s)
	switch string(s) {
	case "", "true", "{}":
		return g.str(node{}, path)
	case "false":
		return errNoValue
	}
	var n node
	if s[0] != '{' || json.Unmarshal(s, &n) != nil {
		return errors.New("a schema must be an object or a boolean")
	}
	if ref, ok := n["$ref"]; ok {
		target, err := g.resolve(ref)
		if err != nil {
			return err
		}
		return g.value(target, path, depth+1)
	}
	if c, ok := n["const"]; ok {
		return g.raw(c)
	}
	if e, ok := n["enum"]; ok {
		var vals []json.RawMessage
		if err := json.Unmarshal(e, &vals); err != nil || len(vals) == 0 {
			return errors.New("enum must be a non-empty array")
		}
		return g.raw(vals[g.rand(path)%uint64(len(vals))])
	}
	for _, k := range []string{"anyOf", "oneOf"} {
		if b, ok := n[k]; ok {
			branch, err := g.branch(b, k, depth)
			if err != nil {
				return err
			}
			return g.value(g.withSiblings(n, branch, k), path, depth+1)
		}
	}
	if b, ok := n["allOf"]; ok {
		merged, err := g.merge(n, b)
		if err != nil {
			return err
		}
		return g.value(merged, path, depth+1)
	}
	switch t := g.typeOf(n, depth); t {
	case "object":
		return g.object(n, path, depth)
	case "array":
		return g.array(n, path, depth)
	case "string":
		return g.str(n, path)
	case "integer", "number":
		v, err := number(n, g.rand(path), t == "integer")
		if err != nil {
			return err
		}
		g.out = append(g.out, v...)
	case "boolean":
		g.out = strconv.AppendBool(g.out, g.rand(path)&1 == 1)
	case "null":
		g.out = append(g.out, "null"...)
	default:
		return fmt.Errorf("unknown type %q", t)
	}
	return nil
}

// raw writes a JSON value from the schema (const, enum) as it is.
func (g *schemaGen) raw(v json.RawMessage) error {
	var b bytes.Buffer
	if err := json.Compact(&b, v); err != nil {
		return fmt.Errorf("a schema value is not JSON: %w", err)
	}
	g.out = append(g.out, b.Bytes()...)
	return nil
}

// resolve follows a $ref within the schema ("#", "#/$defs/x",
// "#/definitions/x", any JSON pointer into it).
func (g *schemaGen) resolve(ref json.RawMessage) (json.RawMessage, error) {
	g.refs++
	if g.refs > maxRefs {
		return nil, fmt.Errorf("schema resolves more than %d $refs", maxRefs)
	}
	var s string
	if err := json.Unmarshal(ref, &s); err != nil {
		return nil, errors.New("$ref must be a string")
	}
	if v, ok := g.resolved[s]; ok {
		return v, nil
	}
	ptr, ok := strings.CutPrefix(s, "#")
	if !ok {
		return nil, fmt.Errorf("$ref %q: only references within the schema (#...) are followed", s)
	}
	v, err := g.pointer(ptr)
	if err != nil {
		return nil, fmt.Errorf("$ref %q: %w", s, err)
	}
	if g.resolved == nil {
		g.resolved = map[string]json.RawMessage{}
	}
	g.resolved[s] = v
	return v, nil
}

// pointer returns the part of the schema a JSON pointer (after the #)
// names.
func (g *schemaGen) pointer(ptr string) (json.RawMessage, error) {
	cur := g.root
	if ptr == "" {
		return cur, nil
	}
	if !strings.HasPrefix(ptr, "/") {
		return nil, errors.New("not a JSON pointer")
	}
	if g.objects == nil {
		g.objects = map[string]node{}
	}
	at := ""
	for _, tok := range strings.Split(ptr[1:], "/") {
		n, ok := g.objects[at]
		if !ok && json.Unmarshal(cur, &n) == nil {
			g.objects[at], ok = n, true
		}
		at += "/" + tok
		tok = strings.ReplaceAll(strings.ReplaceAll(tok, "~1", "/"), "~0", "~")
		if !ok {
			var arr []json.RawMessage
			i, err := strconv.Atoi(tok)
			if json.Unmarshal(cur, &arr) != nil || err != nil || i < 0 || i >= len(arr) {
				return nil, errors.New("does not resolve")
			}
			cur = arr[i]
			continue
		}
		next, ok := n[tok]
		if !ok {
			return nil, errors.New("does not resolve")
		}
		cur = next
	}
	return cur, nil
}

// branch picks an anyOf or oneOf alternative: the first, or once deep
// enough to be ending recursion, the first that is null or holds no $ref.
func (g *schemaGen) branch(raw json.RawMessage, key string, depth int) (json.RawMessage, error) {
	var bs []json.RawMessage
	if err := json.Unmarshal(raw, &bs); err != nil || len(bs) == 0 {
		return nil, fmt.Errorf("%s must be a non-empty array", key)
	}
	if depth >= shallowDepth {
		for _, b := range bs {
			if bytes.Contains(b, []byte(`"null"`)) && !bytes.Contains(b, []byte(`"$ref"`)) {
				return b, nil
			}
		}
		for _, b := range bs {
			if !bytes.Contains(b, []byte(`"$ref"`)) {
				return b, nil
			}
		}
	}
	return bs[0], nil
}

// withSiblings returns branch with the keywords that stand beside anyOf or
// oneOf in n (a type, properties), which apply to it too.
func (g *schemaGen) withSiblings(n node, branch json.RawMessage, key string) json.RawMessage {
	rest := make(node, len(n))
	for k, v := range n {
		switch k {
		case key, "$defs", "definitions", "$schema", "$id", "title", "description", "default", "examples":
		default:
			rest[k] = v
		}
	}
	if len(rest) == 0 {
		return branch
	}
	sub, _ := json.Marshal(rest) // a map of raw JSON always marshals
	merged, err := g.merge(node{}, json.RawMessage(`[`+string(sub)+`,`+string(branch)+`]`))
	if err != nil {
		return branch
	}
	return merged
}

// merge folds allOf's schemas (and n's own keywords) into one: properties
// and required are united, other keywords taken from the first that has
// them.
func (g *schemaGen) merge(n node, all json.RawMessage) (json.RawMessage, error) {
	var subs []json.RawMessage
	if err := json.Unmarshal(all, &subs); err != nil {
		return nil, errors.New("allOf must be an array")
	}
	out := node{}
	var propKeys []string
	props := map[string]json.RawMessage{}
	var required []string
	add := func(m node) {
		for k, v := range m {
			switch k {
			case "allOf":
			case "properties":
				for _, pk := range orderedKeys(v) {
					if _, seen := props[pk]; !seen {
						propKeys = append(propKeys, pk)
					}
					var pm map[string]json.RawMessage
					_ = json.Unmarshal(v, &pm)
					props[pk] = pm[pk]
				}
			case "required":
				var r []string
				_ = json.Unmarshal(v, &r)
				for _, x := range r {
					if !slices.Contains(required, x) {
						required = append(required, x)
					}
				}
			default:
				if _, ok := out[k]; !ok {
					out[k] = v
				}
			}
		}
	}
	add(n)
	for _, s := range subs {
		s = bytes.TrimSpace(s)
		for range maxSchemaDepth {
			var m node
			if json.Unmarshal(s, &m) != nil {
				break
			}
			if ref, ok := m["$ref"]; ok && len(m) == 1 {
				var err error
				if s, err = g.resolve(ref); err != nil {
					return nil, err
				}
				continue
			}
			add(m)
			break
		}
	}
	if len(propKeys) > 0 {
		// Written in order by hand: a map would sort them.
		var b bytes.Buffer
		b.WriteByte('{')
		for i, k := range propKeys {
			if i > 0 {
				b.WriteByte(',')
			}
			kb, _ := json.Marshal(k)
			b.Write(kb)
			b.WriteByte(':')
			b.Write(props[k])
		}
		b.WriteByte('}')
		out["properties"] = b.Bytes()
	}
	if len(required) > 0 {
		out["required"], _ = json.Marshal(required)
	}
	// The merged node's keys are sorted by Marshal, but properties keeps
	// its order inside its own raw value.
	return json.Marshal(out)
}

// typeOf is the type to generate for n: its type (the first of several
// that is not null, or null once deep), or one its keywords imply.
func (g *schemaGen) typeOf(n node, depth int) string {
	if raw, ok := n["type"]; ok {
		var t string
		if json.Unmarshal(raw, &t) == nil {
			return t
		}
		var ts []string
		if json.Unmarshal(raw, &ts) == nil && len(ts) > 0 {
			if depth >= shallowDepth && slices.Contains(ts, "null") {
				return "null"
			}
			for _, t := range ts {
				if t != "null" {
					return t
				}
			}
			return "null"
		}
	}
	has := func(keys ...string) bool {
		for _, k := range keys {
			if _, ok := n[k]; ok {
				return true
			}
		}
		return false
	}
	switch {
	case has("properties", "required", "additionalProperties"):
		return "object"
	case has("items", "prefixItems", "minItems", "maxItems"):
		return "array"
	case has("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"):
		return "number"
	}
	return "string"
}

// object writes n's properties in the schema's order (all of them, fewer
// once deep), then any required one it does not define.
func (g *schemaGen) object(n node, path string, depth int) error {
	var required []string
	if r, ok := n["required"]; ok {
		if err := json.Unmarshal(r, &required); err != nil {
			return errors.New("required must be an array of strings")
		}
	}
	var props map[string]json.RawMessage
	var keys []string
	if p, ok := n["properties"]; ok {
		if err := json.Unmarshal(p, &props); err != nil {
			return errors.New("properties must be an object")
		}
		keys = orderedKeys(p)
	}
	for _, r := range required {
		if _, ok := props[r]; !ok && !slices.Contains(keys, r) {
			keys = append(keys, r)
		}
	}
	g.out = append(g.out, '{')
	first := true
	for _, k := range keys {
		if depth >= shallowDepth && !slices.Contains(required, k) {
			continue
		}
		s, ok := props[k]
		if ok && string(bytes.TrimSpace(s)) == "false" && !slices.Contains(required, k) {
			continue // a property the schema forbids
		}
		if !ok {
			s = n["additionalProperties"]
			if string(bytes.TrimSpace(s)) == "false" {
				s = nil // required but forbidden: a string, as good as any
			}
		}
		if !first {
			g.out = append(g.out, ',')
		}
		first = false
		kb, _ := json.Marshal(k)
		g.out = append(append(g.out, kb...), ':')
		if err := g.value(s, path+"/"+k, depth+1); err != nil {
			return fmt.Errorf("%s: %w", k, err)
		}
	}
	g.out = append(g.out, '}')
	return nil
}

// array writes n's items: a tuple's (prefixItems, or items as an array)
// first, then items' own, between minItems and maxItems of them, distinct
// when uniqueItems says so (as far as a few tries make them).
func (g *schemaGen) array(n node, path string, depth int) error {
	minItems, maxItems := 0, -1
	if err := intKeyword(n, "minItems", &minItems); err != nil {
		return err
	}
	if err := intKeyword(n, "maxItems", &maxItems); err != nil {
		return err
	}
	var prefix []json.RawMessage
	items := n["items"]
	if p, ok := n["prefixItems"]; ok {
		if err := json.Unmarshal(p, &prefix); err != nil {
			return errors.New("prefixItems must be an array")
		}
	} else if t := bytes.TrimSpace(items); len(t) > 0 && t[0] == '[' {
		if err := json.Unmarshal(t, &prefix); err != nil {
			return errors.New("items must be a schema or an array of schemas")
		}
		items = n["additionalItems"]
	}
	count := 1 + int(g.rand(path)%3)
	if depth >= shallowDepth {
		count = 0
	}
	count = max(count, minItems, len(prefix))
	if maxItems >= 0 {
		count = min(count, maxItems)
	}
	if string(bytes.TrimSpace(items)) == "false" {
		count = min(count, len(prefix))
	}
	var unique bool
	if u, ok := n["uniqueItems"]; ok {
		_ = json.Unmarshal(u, &unique)
	}
	g.out = append(g.out, '[')
	var seen []string
	for i := range count {
		if i > 0 {
			g.out = append(g.out, ',')
		}
		s := items
		if i < len(prefix) {
			s = prefix[i]
		}
		start := len(g.out)
		for try := 0; ; try++ {
			p := path + "/" + strconv.Itoa(i)
			if try > 0 {
				p += "#" + strconv.Itoa(try)
			}
			if err := g.value(s, p, depth+1); err != nil {
				return fmt.Errorf("item %d: %w", i, err)
			}
			v := string(g.out[start:])
			if !unique || !slices.Contains(seen, v) || try == 15 {
				seen = append(seen, v)
				break
			}
			g.out = g.out[:start]
		}
	}
	g.out = append(g.out, ']')
	return nil
}

// intKeyword reads a non-negative integer keyword into v, when n has it.
func intKeyword(n node, key string, v *int) error {
	raw, ok := n[key]
	if !ok {
		return nil
	}
	var f float64
	if err := json.Unmarshal(raw, &f); err != nil || f < 0 || f != math.Trunc(f) {
		return fmt.Errorf("%s must be a non-negative integer", key)
	}
	if f > maxDocBytes {
		return fmt.Errorf("%s %v: the simulator makes at most %d", key, f, maxDocBytes)
	}
	*v = int(f)
	return nil
}

// number returns a number (an integer when integer) within n's bounds and
// a multiple of its multipleOf: from 0 to 100 where the bounds allow, else
// near them.
func number(n node, r uint64, integer bool) (string, error) {
	read := func(key string) (float64, bool, error) {
		raw, ok := n[key]
		if !ok {
			return 0, false, nil
		}
		var f float64
		if err := json.Unmarshal(raw, &f); err != nil {
			var b bool
			if json.Unmarshal(raw, &b) == nil {
				return 0, false, nil // draft 4's boolean exclusive bounds, read below
			}
			return 0, false, fmt.Errorf("%s must be a number", key)
		}
		return f, true, nil
	}
	lo, hi := math.Inf(-1), math.Inf(1)
	loOpen, hiOpen := false, false
	if v, ok, err := read("minimum"); err != nil {
		return "", err
	} else if ok {
		lo = v
	}
	if v, ok, err := read("maximum"); err != nil {
		return "", err
	} else if ok {
		hi = v
	}
	if v, ok, err := read("exclusiveMinimum"); err != nil {
		return "", err
	} else if ok && v >= lo {
		lo, loOpen = v, true
	}
	if v, ok, err := read("exclusiveMaximum"); err != nil {
		return "", err
	} else if ok && v <= hi {
		hi, hiOpen = v, true
	}
	var draft4 bool
	if raw, ok := n["exclusiveMinimum"]; ok && json.Unmarshal(raw, &draft4) == nil && draft4 {
		loOpen = true
	}
	if raw, ok := n["exclusiveMaximum"]; ok && json.Unmarshal(raw, &draft4) == nil && draft4 {
		hiOpen = true
	}
	step, decimals := 1.0, 0
	if v, ok, err := read("multipleOf"); err != nil {
		return "", err
	} else if ok {
		if v <= 0 {
			return "", errors.New("multipleOf must be greater than 0")
		}
		step = v
		if s := strconv.FormatFloat(v, 'f', -1, 64); strings.Contains(s, ".") {
			decimals = len(s) - strings.IndexByte(s, '.') - 1
		}
		if integer && v != math.Trunc(v) {
			// An integer multiple of a fraction: a multiple of 1 and of
			// it at once is found among whole multiples of it.
			step = v * math.Pow(10, float64(decimals))
			decimals = 0
		}
	} else if !integer && r&1 == 1 {
		step, decimals = 0.5, 1 // some numbers with a fraction
	}
	// Multiples k·step within the bounds, in the window 0..100 where the
	// bounds meet it, else the 100 steps nearest them.
	kLo, kHi := math.Ceil(lo/step), math.Floor(hi/step)
	if loOpen && kLo*step <= lo {
		kLo++
	}
	if hiOpen && kHi*step >= hi {
		kHi--
	}
	wLo, wHi := math.Ceil(0/step), math.Floor(100/step)
	switch {
	case kLo > kHi:
		return "", errors.New("no number lies within the bounds")
	case kLo > wHi:
		wLo, wHi = kLo, kLo+100
	case kHi < wLo:
		wLo, wHi = kHi-100, kHi
	}
	wLo, wHi = max(wLo, kLo), min(wHi, kHi)
	if math.Abs(wLo) > 1<<53 || math.Abs(wHi) > 1<<53 {
		return "", errors.New("bounds beyond what a float64 counts exactly")
	}
	k := wLo + float64(r%uint64(wHi-wLo+1))
	v := strconv.FormatFloat(k*step, 'f', decimals, 64)
	if decimals > 0 {
		// Rounded to the step's decimals (0.1·3 is not 0.3 in a
		// float), then written as a model would: 2, not 2.00.
		v = strings.TrimSuffix(strings.TrimRight(v, "0"), ".")
	}
	return v, nil
}

// str writes a string for n: an example of its format, else one its
// pattern matches, else a few words of the simulator's sentence, within its
// lengths; the first of these that meets all of n's constraints.
func (g *schemaGen) str(n node, path string) error {
	r := g.rand(path)
	var pattern, format string
	minLen, maxLen := 0, -1
	if raw, ok := n["pattern"]; ok {
		if err := json.Unmarshal(raw, &pattern); err != nil {
			return errors.New("pattern must be a string")
		}
	}
	if raw, ok := n["format"]; ok {
		_ = json.Unmarshal(raw, &format)
	}
	if err := intKeyword(n, "minLength", &minLen); err != nil {
		return err
	}
	if err := intKeyword(n, "maxLength", &maxLen); err != nil {
		return err
	}
	var re *regexp.Regexp
	var cands []string
	if f := formatted(format, r); f != "" {
		cands = append(cands, f)
	}
	if pattern != "" {
		if parsed, err := syntax.Parse(pattern, syntax.Perl); err == nil {
			re, _ = regexp.Compile(pattern)
			var sb strings.Builder
			matching(&sb, parsed, r, 0)
			cands = append(cands, sb.String())
		}
	}
	cands = append(cands, wordsOfLength(r, minLen, maxLen))
	pick := cands[len(cands)-1]
	for _, c := range cands {
		l := utf8.RuneCountInString(c)
		if (re == nil || re.MatchString(c)) && l >= minLen && (maxLen < 0 || l <= maxLen) {
			pick = c
			break
		}
	}
	b, _ := json.Marshal(pick)
	g.out = append(g.out, b...)
	return nil
}

// wordsOfLength returns a few words of the simulator's sentence, from 1 to
// 3 picked by r, as long as minLen asks and no longer than maxLen allows.
func wordsOfLength(r uint64, minLen, maxLen int) string {
	var sb strings.Builder
	k := int(r>>8) % len(words)
	for i := 0; i < 1+int(r%3) || sb.Len() < minLen; i++ {
		if i > 0 {
			sb.WriteByte(' ')
		}
		sb.WriteString(strings.ToLower(strings.TrimSuffix(words[(k+i)%len(words)], ".")))
	}
	s := sb.String()
	if maxLen >= 0 && len(s) > maxLen {
		s = s[:maxLen]
	}
	return s
}

// formatted returns an example of a string format, or "" for a format it
// does not know.
func formatted(format string, r uint64) string {
	mo, d, h, mi, s := 1+r%12, 1+(r>>4)%28, (r>>9)%24, (r>>14)%60, (r>>20)%60
	switch format {
	case "date-time":
		return fmt.Sprintf("2025-%02d-%02dT%02d:%02d:%02dZ", mo, d, h, mi, s)
	case "date":
		return fmt.Sprintf("2025-%02d-%02d", mo, d)
	case "time":
		return fmt.Sprintf("%02d:%02d:%02d", h, mi, s)
	case "duration":
		return fmt.Sprintf("PT%dM", 1+mi)
	case "email", "idn-email":
		return words[1+int(r%3)] + "@example.com"
	case "hostname", "idn-hostname":
		return words[1+int(r%3)] + ".example.com"
	case "uri", "url", "iri", "uri-reference", "iri-reference":
		return "https://example.com/" + words[1+int(r%3)]
	case "uuid":
		return fmt.Sprintf("%08x-%04x-4%03x-8%03x-%012x", uint32(r), uint16(r>>32), (r>>48)&0xfff, (r>>20)&0xfff, mix64(r)&0xffffffffffff)
	case "ipv4":
		return fmt.Sprintf("192.0.2.%d", 1+r%254)
	case "ipv6":
		return fmt.Sprintf("2001:db8::%x", 1+r%0xfffe)
	}
	return ""
}

// matching writes a string that the parsed pattern re matches: the fewest
// repetitions (at least one of a star or plus, to show something), the
// first alternative, a readable character of each class. The caller checks
// the result: anchors and word boundaries inside a pattern can defeat it.
func matching(sb *strings.Builder, re *syntax.Regexp, r uint64, depth int) {
	if depth > 32 || sb.Len() > 256 {
		return
	}
	switch re.Op {
	case syntax.OpLiteral:
		for _, c := range re.Rune {
			sb.WriteRune(c)
		}
	case syntax.OpCharClass:
		sb.WriteRune(classRune(re.Rune, r+uint64(sb.Len())))
	case syntax.OpAnyChar, syntax.OpAnyCharNotNL:
		sb.WriteByte('x')
	case syntax.OpCapture:
		matching(sb, re.Sub[0], r, depth+1)
	case syntax.OpConcat:
		for _, s := range re.Sub {
			matching(sb, s, r, depth+1)
		}
	case syntax.OpAlternate:
		matching(sb, re.Sub[0], r, depth+1)
	case syntax.OpStar, syntax.OpPlus, syntax.OpQuest:
		matching(sb, re.Sub[0], r, depth+1)
	case syntax.OpRepeat:
		n := max(re.Min, 1)
		if re.Max >= 0 {
			n = min(n, re.Max)
		}
		for range n {
			matching(sb, re.Sub[0], r, depth+1)
		}
	}
}

// classRune picks a character of a class (pairs of inclusive ranges): a
// letter or digit where it has one, chosen by r, else its first printable
// ASCII character, else its first.
func classRune(ranges []rune, r uint64) rune {
	in := func(c rune) bool {
		for i := 0; i+1 < len(ranges); i += 2 {
			if c >= ranges[i] && c <= ranges[i+1] {
				return true
			}
		}
		return false
	}
	const nice = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
	for i := range len(nice) {
		if c := rune(nice[(int(r%uint64(len(nice)))+i)%len(nice)]); in(c) {
			return c
		}
	}
	for c := rune(0x21); c < 0x7f; c++ {
		if in(c) {
			return c
		}
	}
	if len(ranges) > 0 {
		return ranges[0]
	}
	return 'x'
}

// orderedKeys returns an object's keys in the order they are written: a
// schema's properties come out in that order, as a model writes them.
func orderedKeys(raw json.RawMessage) []string {
	dec := json.NewDecoder(bytes.NewReader(raw))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return nil
	}
	var keys []string
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return keys
		}
		k, _ := t.(string)
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return keys
		}
		if !slices.Contains(keys, k) {
			keys = append(keys, k)
		}
	}
	return keys
}

// splitTokens cuts a generated document into tokens as a model would send
// them: runs of letters and digits, and of other characters, at most 6
// bytes each, never inside a character.
func splitTokens(s string) []string {
	var toks []string
	start, prevWord := 0, false
	for i, c := range s {
		word := c == '_' || ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z') || ('0' <= c && c <= '9') || c >= utf8.RuneSelf
		if i > start && (word != prevWord || i-start >= 6) {
			toks = append(toks, s[start:i])
			start = i
		}
		prevWord = word
	}
	if start < len(s) {
		toks = append(toks, s[start:])
	}
	return toks
}
