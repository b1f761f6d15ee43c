package sim

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

// validator compiles a JSON schema with an implementation the generator
// shares nothing with, formats asserted.
func validator(t *testing.T, schema string) *jsonschema.Schema {
	t.Helper()
	doc, err := jsonschema.UnmarshalJSON(strings.NewReader(schema))
	if err != nil {
		t.Fatalf("schema %s: %v", schema, err)
	}
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	if err := c.AddResource("schema.json", doc); err != nil {
		t.Fatal(err)
	}
	sch, err := c.Compile("schema.json")
	if err != nil {
		t.Fatalf("compile %s: %v", schema, err)
	}
	return sch
}

// validates fails the test unless doc is JSON valid against sch.
func validates(t *testing.T, sch *jsonschema.Schema, doc []byte) {
	t.Helper()
	v, err := jsonschema.UnmarshalJSON(strings.NewReader(string(doc)))
	if err != nil {
		t.Fatalf("generated %s: not JSON: %v", doc, err)
	}
	if err := sch.Validate(v); err != nil {
		t.Fatalf("generated %s: invalid: %v", doc, err)
	}
}

// schemaCases are schemas of the kinds clients send: what zod, Pydantic
// and hand-written function definitions turn into.
var schemaCases = []struct {
	name   string
	schema string
	// want, when set, must match the whole document.
	want string
}{
	{"empty object", `{"type":"object"}`, `^\{\}$`},
	{"no schema at all", `{}`, `^"[a-z ]+"$`},
	{"flat properties in order", `{"type":"object","properties":{"city":{"type":"string"},"days":{"type":"integer"},"metric":{"type":"boolean"},"t":{"type":"number"},"n":{"type":"null"}},"required":["city"]}`,
		`^\{"city":"[a-z ]+","days":\d+,"metric":(true|false),"t":\d+(\.\d)?,"n":null\}$`},
	{"enum and const", `{"type":"object","properties":{"unit":{"enum":["celsius","fahrenheit"]},"v":{"const":{"a":[1,2]}},"k":{"type":"string","enum":["x"]}}}`,
		`^\{"unit":"(celsius|fahrenheit)","v":\{"a":\[1,2\]\},"k":"x"\}$`},
	{"integer bounds", `{"type":"integer","minimum":1000,"maximum":1003}`, `^100[0-3]$`},
	{"exclusive bounds (draft 2020)", `{"type":"integer","exclusiveMinimum":5,"exclusiveMaximum":7}`, `^6$`},
	{"exclusive bounds (draft 4)", `{"$schema":"http://json-schema.org/draft-04/schema#","type":"integer","minimum":5,"exclusiveMinimum":true,"maximum":7,"exclusiveMaximum":true}`, `^6$`},
	{"negative range", `{"type":"number","maximum":-500}`, `^-\d+(\.\d)?$`},
	{"zod int's safe-integer bounds", `{"type":"integer","minimum":-9007199254740991,"maximum":9007199254740991}`, `^\d+$`},
	{"multipleOf a fraction", `{"type":"number","multipleOf":0.01,"minimum":0.5,"maximum":0.6}`, `^0\.\d\d?$`},
	{"integer multipleOf", `{"type":"integer","multipleOf":7,"minimum":1}`, `^\d+$`},
	{"string lengths", `{"type":"string","minLength":40,"maxLength":45}`, ``},
	{"short maxLength", `{"type":"string","maxLength":2}`, `^"[a-z ]{0,2}"$`},
	{"pattern", `{"type":"string","pattern":"^[A-Z]{3}-\\d{4}$"}`, `^"[A-Z]{3}-\d{4}"$`},
	{"formats", `{"type":"object","properties":{"at":{"type":"string","format":"date-time"},"d":{"type":"string","format":"date"},"e":{"type":"string","format":"email"},` +
		`"u":{"type":"string","format":"uri"},"id":{"type":"string","format":"uuid"},"ip":{"type":"string","format":"ipv4"},"h":{"type":"string","format":"hostname"}}}`, ``},
	{"arrays", `{"type":"array","items":{"type":"object","properties":{"name":{"type":"string"},"age":{"type":"integer","minimum":0,"maximum":120}},"required":["name","age"],"additionalProperties":false},"minItems":2,"maxItems":4}`, ``},
	{"unique items of an enum", `{"type":"array","items":{"enum":["a","b","c"]},"minItems":3,"uniqueItems":true}`, ``},
	{"tuple (prefixItems)", `{"type":"array","prefixItems":[{"type":"string"},{"type":"integer"}],"items":false}`, `^\["[a-z ]+",\d+\]$`},
	{"tuple (draft 7 items array)", `{"$schema":"http://json-schema.org/draft-07/schema#","type":"array","items":[{"type":"boolean"},{"type":"null"}],"additionalItems":false}`, `^\[(true|false),null\]$`},
	{"nullable type list", `{"type":["string","null"]}`, `^"[a-z ]+"$`},
	{"anyOf (zod nullable)", `{"anyOf":[{"type":"string","minLength":3},{"type":"null"}]}`, `^"[a-z ]{3,}"$`},
	{"oneOf discriminated union", `{"oneOf":[{"type":"object","properties":{"kind":{"const":"circle"},"r":{"type":"number"}},"required":["kind","r"]},{"type":"object","properties":{"kind":{"const":"square"},"side":{"type":"number"}},"required":["kind","side"]}]}`,
		`^\{"kind":"circle","r":`},
	{"allOf merges", `{"allOf":[{"type":"object","properties":{"a":{"type":"string"}},"required":["a"]},{"properties":{"b":{"type":"integer","minimum":3,"maximum":3}},"required":["b"]}]}`,
		`^\{"a":"[a-z ]+","b":3\}$`},
	{"$defs and $ref", `{"type":"object","properties":{"home":{"$ref":"#/$defs/addr"},"work":{"$ref":"#/$defs/addr"}},"required":["home"],"$defs":{"addr":{"type":"object","properties":{"street":{"type":"string"},"zip":{"type":"string","pattern":"^\\d{5}$"}},"required":["street","zip"]}}}`, ``},
	{"recursive tree (definitions)", `{"$ref":"#/definitions/node","definitions":{"node":{"type":"object","properties":{"name":{"type":"string"},"children":{"type":"array","items":{"$ref":"#/definitions/node"}}},"required":["name","children"]}}}`, ``},
	{"recursive nullable", `{"type":"object","properties":{"v":{"type":"integer"},"next":{"anyOf":[{"$ref":"#"},{"type":"null"}]}},"required":["v","next"]}`, ``},
	{"required without a property", `{"type":"object","required":["x"],"additionalProperties":{"type":"integer","minimum":1,"maximum":1}}`, `^\{"x":1\}$`},
	{"implied types", `{"properties":{"list":{"items":{"minimum":2,"maximum":2}},"s":{"minLength":1}}}`, `^\{"list":\[2(,2)*\],"s":"[a-z ]+"\}$`},
	{"zod 4 object", `{"$schema":"https://json-schema.org/draft/2020-12/schema","type":"object","properties":{"destination":{"type":"string","minLength":3,"description":"where to"},` +
		`"nights":{"type":"integer","minimum":1,"maximum":14},"budget":{"type":"number","exclusiveMinimum":0},"transport":{"type":"string","enum":["train","plane"]},` +
		`"notes":{"anyOf":[{"type":"string"},{"type":"null"}]},"tags":{"type":"array","items":{"type":"string"}}},"required":["destination","nights","budget","transport","notes"],"additionalProperties":false}`, ``},
}

func TestExampleJSON_ValidAgainstTheSchema(t *testing.T) {
	for _, tc := range schemaCases {
		t.Run(tc.name, func(t *testing.T) {
			sch := validator(t, tc.schema)
			for seed := range uint64(40) {
				doc, err := exampleJSON(json.RawMessage(tc.schema), seed*0x9e3779b97f4a7c15)
				if err != nil {
					t.Fatalf("seed %d: %v", seed, err)
				}
				validates(t, sch, doc)
				if tc.want != "" && !regexp.MustCompile(tc.want).Match(doc) {
					t.Fatalf("seed %d: %s, want it to match %s", seed, doc, tc.want)
				}
			}
		})
	}
}

// zod's email pattern has lookaheads, which Go's regexp (and so the
// validator) cannot read: the format's example stands in, and must match the
// pattern as JavaScript reads it (checked here without the lookaheads,
// which forbid a leading dot and "..").
func TestExampleJSON_FormatOverAPatternGoCannotRead(t *testing.T) {
	schema := `{"type":"string","format":"email","pattern":"^(?!\\.)(?!.*\\.\\.)([A-Za-z0-9_'+\\-\\.]*)[A-Za-z0-9_+-]@([A-Za-z0-9][A-Za-z0-9\\-]*\\.)+[A-Za-z]{2,}$"}`
	rest := regexp.MustCompile(`^([A-Za-z0-9_'+\-\.]*)[A-Za-z0-9_+-]@([A-Za-z0-9][A-Za-z0-9\-]*\.)+[A-Za-z]{2,}$`)
	for seed := range uint64(20) {
		doc, err := exampleJSON(json.RawMessage(schema), seed)
		if err != nil {
			t.Fatal(err)
		}
		var s string
		if err := json.Unmarshal(doc, &s); err != nil || !rest.MatchString(s) || strings.HasPrefix(s, ".") || strings.Contains(s, "..") {
			t.Fatalf("seed %d: %s is not an email zod accepts (%v)", seed, doc, err)
		}
	}
}

// The same schema and seed give the same document; other seeds give
// others.
func TestExampleJSON_Deterministic(t *testing.T) {
	schema := json.RawMessage(`{"type":"object","properties":{"city":{"type":"string"},"days":{"type":"integer"},"unit":{"enum":["c","f","k"]}}}`)
	first, err := exampleJSON(schema, 42)
	if err != nil {
		t.Fatal(err)
	}
	again, _ := exampleJSON(schema, 42)
	if string(first) != string(again) {
		t.Fatalf("seed 42 gave %s, then %s", first, again)
	}
	distinct := map[string]bool{}
	for seed := range uint64(20) {
		doc, _ := exampleJSON(schema, seed)
		distinct[string(doc)] = true
	}
	if len(distinct) < 10 {
		t.Errorf("20 seeds gave %d distinct documents: %v", len(distinct), distinct)
	}
}

func TestExampleJSON_Refuses(t *testing.T) {
	for _, tc := range []struct {
		name, schema, why string
	}{
		{"false", `false`, "admits no value"},
		{"a required false property", `{"type":"object","properties":{"a":false},"required":["a"]}`, "admits no value"},
		{"not a schema", `[1]`, "must be an object or a boolean"},
		{"external $ref", `{"$ref":"https://example.com/s.json"}`, "only references within the schema"},
		{"dangling $ref", `{"$ref":"#/$defs/missing"}`, "does not resolve"},
		{"infinite recursion", `{"type":"object","properties":{"a":{"$ref":"#"}},"required":["a"]}`, "deeper than"},
		{"empty enum", `{"enum":[]}`, "non-empty array"},
		{"too many items", `{"type":"array","items":{"type":"string","minLength":100},"minItems":60000}`, "bytes"},
		{"empty range", `{"type":"integer","minimum":3,"maximum":2}`, "no number"},
		{"integer between integers", `{"type":"integer","exclusiveMinimum":1,"exclusiveMaximum":2}`, "no number"},
		{"unknown type", `{"type":"decimal"}`, "unknown type"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			doc, err := exampleJSON(json.RawMessage(tc.schema), 1)
			if err == nil || !strings.Contains(err.Error(), tc.why) {
				t.Fatalf("got %s, %v; want an error saying %q", doc, err, tc.why)
			}
		})
	}
}

// A document's tokens put back together are the document, and a prefix of
// it, cut anywhere, is continued from the right token.
func TestSplitTokens_ContinuesFixed(t *testing.T) {
	doc := `{"city":"über straße","days":12,"tags":["a","b"]}`
	toks := splitTokens(doc)
	if strings.Join(toks, "") != doc || len(toks) < 10 {
		t.Fatalf("tokens %q", toks)
	}
	for _, tok := range toks {
		if len(tok) > 6 && strings.ContainsAny(tok, `{}":,[]`) {
			t.Errorf("token %q mixes letters and punctuation or is too long", tok)
		}
	}
	for cut := 0; cut <= len(doc); cut++ {
		prefix := doc[:cut]
		k, rest, ok := continuesFixed(toks, prefix)
		if !ok {
			t.Fatalf("cut %d: %q does not continue", cut, prefix)
		}
		if got := prefix + rest + strings.Join(toks[min(k+1, len(toks)):], ""); got != doc {
			t.Fatalf("cut %d: continued to %q", cut, got)
		}
	}
	if _, _, ok := continuesFixed(toks, `{"city":"paris`); ok {
		t.Error("a text that is not the document's start continues it")
	}
	if _, _, ok := continuesFixed(toks, doc+" more"); ok {
		t.Error("a text longer than the document continues it")
	}
}

// FuzzExampleJSON feeds arbitrary schemas to the generator, as a request's
// tools and response_format do: it must not panic or run away, and what
// it makes must be JSON within the size bound.
func FuzzExampleJSON(f *testing.F) {
	for _, tc := range schemaCases {
		f.Add([]byte(tc.schema), uint64(1))
	}
	f.Add([]byte(`{"$ref":"#/$defs/a","$defs":{"a":{"type":"array","items":{"$ref":"#/$defs/a"},"minItems":2}}}`), uint64(2))
	f.Add([]byte(`{"allOf":[{"$ref":"#"}]}`), uint64(3))
	f.Add([]byte(`{"type":"string","pattern":"(a|b)*c{3,}\\b[^\\x00-\\x7f]"}`), uint64(4))
	f.Add([]byte(`{"type":"array","items":{"type":"string","minLength":60000},"minItems":2}`), uint64(5))
	f.Fuzz(func(t *testing.T, schema []byte, seed uint64) {
		doc, err := exampleJSON(schema, seed)
		if err != nil {
			return
		}
		if !json.Valid(doc) || len(doc) > maxDocBytes {
			t.Fatalf("schema %s made %d bytes: %.200s", schema, len(doc), doc)
		}
	})
}
