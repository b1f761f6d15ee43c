package proxy

import (
	"bytes"
	"errors"
	"strconv"
	"unicode/utf8"

	jsonv2 "github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
)

// chunkScanner reads stream chunks into a wireChunk without reflection. The
// entry node reads every chunk of every stream for migration, and the
// reflective decoder was about a third of its CPU on a stream of short
// chunks (1.5 µs of 4.5 µs per event, beside the TLS read from the hive and
// the write to the client): carrying a stream through two nodes cost that
// much more than through nginx.
//
// It reads the common shape only, checking the syntax as it goes; anything
// else (an escaped member name, a null where an object goes, a number that
// is no integer, nesting deeper than chunkMaxDepth, bytes that are not
// UTF-8) makes it give up, and the reflective decoder, the reference,
// decodes the chunk instead. What it fills in is therefore what
// jsonv2.Unmarshal fills in (FuzzChunkScanner holds it to that).
type chunkScanner struct {
	b     []byte
	i     int
	buf   []byte     // unquoting scratch
	names [][][]byte // member names per nesting level, for duplicates
}

// errChunkSlow makes the scanner give up on a chunk.
var errChunkSlow = errors.New("not the common chunk shape")

// chunkMaxDepth bounds the nesting the scanner follows.
const chunkMaxDepth = 16

// decode fills c, reset (wireChunk.reset), from data, as
// jsonv2.Unmarshal(data, c) does.
func (s *chunkScanner) decode(data []byte, c *wireChunk) error {
	s.b, s.i = data, 0
	err := s.chunk(c)
	s.b = nil
	if err == nil {
		return nil
	}
	c.reset()
	return jsonv2.Unmarshal(data, c)
}

func (s *chunkScanner) chunk(c *wireChunk) error {
	err := s.object(0, func(name []byte) error {
		var err error
		switch string(name) {
		case "id":
			c.ID, err = s.raw(c.ID)
		case "created":
			c.Created, err = s.raw(c.Created)
		case "model":
			c.Model, err = s.raw(c.Model)
		case "usage":
			c.Usage, err = s.raw(c.Usage)
		case "error":
			c.Error, err = s.raw(c.Error)
		case "choices":
			err = s.choices(c)
		default:
			err = s.skip(1)
		}
		return err
	})
	if err != nil {
		return err
	}
	s.ws()
	if s.i != len(s.b) {
		return errChunkSlow
	}
	return nil
}

func (s *chunkScanner) ws() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

func (s *chunkScanner) peek() byte {
	s.ws()
	if s.i < len(s.b) {
		return s.b[s.i]
	}
	return 0
}

// object reads an object at nesting depth, calling member with each name,
// positioned at its value, which member must read.
func (s *chunkScanner) object(depth int, member func(name []byte) error) error {
	if depth >= chunkMaxDepth || s.peek() != '{' {
		return errChunkSlow
	}
	s.i++
	for len(s.names) <= depth {
		s.names = append(s.names, nil)
	}
	s.names[depth] = s.names[depth][:0]
	if s.peek() == '}' {
		s.i++
		return nil
	}
	for {
		if s.peek() != '"' {
			return errChunkSlow
		}
		name, escaped, err := s.str()
		if err != nil || escaped {
			return errChunkSlow // an escaped name may spell any other
		}
		name = name[1 : len(name)-1]
		for _, n := range s.names[depth] {
			if bytes.Equal(n, name) {
				return errChunkSlow // duplicate: the reference refuses it
			}
		}
		s.names[depth] = append(s.names[depth], name)
		if s.peek() != ':' {
			return errChunkSlow
		}
		s.i++
		if err := member(name); err != nil {
			return err
		}
		switch s.peek() {
		case ',':
			s.i++
		case '}':
			s.i++
			return nil
		default:
			return errChunkSlow
		}
	}
}

// str reads a string token and returns it quoted, as in the input, and
// whether it holds escapes; it checks the escapes and the UTF-8.
func (s *chunkScanner) str() (tok []byte, escaped bool, err error) {
	start := s.i
	s.i++ // the opening quote
	b := s.b
	ascii := true
	for {
		// The plain run first, a byte at a time through a table:
		// nearly every byte of a chunk is in one.
		i := s.i
		for i < len(b) && strPlain[b[i]] {
			i++
		}
		s.i = i
		if i >= len(b) {
			return nil, false, errChunkSlow
		}
		switch c := b[i]; {
		case c == '"':
			s.i++
			tok = b[start:s.i]
			if !ascii && !utf8.Valid(tok) {
				return nil, false, errChunkSlow
			}
			return tok, escaped, nil
		case c == '\\':
			escaped = true
			if s.i+1 >= len(b) {
				return nil, false, errChunkSlow
			}
			switch b[s.i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				s.i += 2
			case 'u':
				if s.i+6 > len(b) {
					return nil, false, errChunkSlow
				}
				r, err := strconv.ParseUint(string(b[s.i+2:s.i+6]), 16, 16)
				if err != nil || 0xd800 <= r && r <= 0xdfff {
					// Surrogates, paired or not: the reference
					// decides.
					return nil, false, errChunkSlow
				}
				s.i += 6
			default:
				return nil, false, errChunkSlow
			}
		case c < 0x20:
			return nil, false, errChunkSlow
		default: // not ASCII: the whole token's UTF-8 is checked at its end
			ascii = false
			s.i++
		}
	}
}

// strPlain marks the bytes a string holds as they are: ASCII, neither a
// control character, a quote nor a backslash.
var strPlain = func() (t [256]bool) {
	for c := 0x20; c < 0x80; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// number reads a number token as JSON spells them, and reports whether it
// is an integer (no fraction, no exponent).
func (s *chunkScanner) number() (tok []byte, integer bool, err error) {
	start := s.i
	digits := func() int {
		n := 0
		for s.i < len(s.b) && '0' <= s.b[s.i] && s.b[s.i] <= '9' {
			s.i++
			n++
		}
		return n
	}
	if s.i < len(s.b) && s.b[s.i] == '-' {
		s.i++
	}
	lead := s.i
	if digits() == 0 || s.b[lead] == '0' && s.i-lead > 1 {
		return nil, false, errChunkSlow
	}
	integer = true
	if s.i < len(s.b) && s.b[s.i] == '.' {
		s.i++
		integer = false
		if digits() == 0 {
			return nil, false, errChunkSlow
		}
	}
	if s.i < len(s.b) && (s.b[s.i] == 'e' || s.b[s.i] == 'E') {
		s.i++
		integer = false
		if s.i < len(s.b) && (s.b[s.i] == '+' || s.b[s.i] == '-') {
			s.i++
		}
		if digits() == 0 {
			return nil, false, errChunkSlow
		}
	}
	return s.b[start:s.i], integer, nil
}

// skip reads a value at nesting depth and returns its bytes.
func (s *chunkScanner) skip(depth int) error {
	_, err := s.value(depth)
	return err
}

// value reads any value at nesting depth and returns its bytes.
func (s *chunkScanner) value(depth int) ([]byte, error) {
	c := s.peek()
	start := s.i
	var err error
	switch {
	case c == '{':
		err = s.object(depth, func([]byte) error { return s.skip(depth + 1) })
	case c == '[':
		err = s.array(depth, func() error { return s.skip(depth + 1) })
	case c == '"':
		_, _, err = s.str()
	case c == '-' || '0' <= c && c <= '9':
		_, _, err = s.number()
	case c == 't':
		err = s.literal("true")
	case c == 'f':
		err = s.literal("false")
	case c == 'n':
		err = s.literal("null")
	default:
		err = errChunkSlow
	}
	if err != nil {
		return nil, err
	}
	return s.b[start:s.i], nil
}

func (s *chunkScanner) literal(lit string) error {
	if !bytes.HasPrefix(s.b[s.i:], []byte(lit)) {
		return errChunkSlow
	}
	s.i += len(lit)
	return nil
}

// array reads an array at nesting depth, calling elem positioned at each
// element, which elem must read.
func (s *chunkScanner) array(depth int, elem func() error) error {
	if depth >= chunkMaxDepth || s.peek() != '[' {
		return errChunkSlow
	}
	s.i++
	if s.peek() == ']' {
		s.i++
		return nil
	}
	for {
		if err := elem(); err != nil {
			return err
		}
		switch s.peek() {
		case ',':
			s.i++
		case ']':
			s.i++
			return nil
		default:
			return errChunkSlow
		}
	}
}

// raw reads a value into a jsontext.Value member, as the reference copies
// it.
func (s *chunkScanner) raw(into jsontext.Value) (jsontext.Value, error) {
	v, err := s.value(1)
	if err != nil {
		return into, err
	}
	return append(into[:0], v...), nil
}

// text reads a string member; null is "".
func (s *chunkScanner) text() (string, error) {
	switch s.peek() {
	case 'n':
		return "", s.literal("null")
	case '"':
	default:
		return "", errChunkSlow
	}
	tok, escaped, err := s.str()
	if err != nil {
		return "", err
	}
	if !escaped {
		return string(tok[1 : len(tok)-1]), nil
	}
	s.buf, err = jsontext.AppendUnquote(s.buf[:0], tok)
	if err != nil {
		return "", errChunkSlow // a lone surrogate, say: the reference decides
	}
	return string(s.buf), nil
}

func (s *chunkScanner) choices(c *wireChunk) error {
	if s.peek() == 'n' {
		c.Choices = nil
		return s.literal("null")
	}
	c.Choices = c.Choices[:0]
	err := s.array(1, func() error {
		c.Choices = append(c.Choices, wireChoice{})
		return s.choice(&c.Choices[len(c.Choices)-1])
	})
	if err == nil && len(c.Choices) == 0 {
		c.Choices = []wireChoice{} // as the reference leaves an empty array
	}
	return err
}

func (s *chunkScanner) choice(ch *wireChoice) error {
	return s.object(2, func(name []byte) error {
		var err error
		switch string(name) {
		case "index":
			if s.peek() == 'n' {
				return errChunkSlow
			}
			var tok []byte
			var integer bool
			if tok, integer, err = s.number(); err != nil || !integer {
				return errChunkSlow
			}
			n, perr := strconv.ParseInt(string(tok), 10, 0)
			if perr != nil {
				return errChunkSlow
			}
			ch.Index = int(n)
		case "delta":
			err = s.delta(ch)
		case "text":
			ch.Text, err = s.text()
		case "finish_reason":
			ch.FinishReason, err = s.text()
		default:
			err = s.skip(3)
		}
		return err
	})
}

func (s *chunkScanner) delta(ch *wireChoice) error {
	d := &ch.Delta
	return s.object(3, func(name []byte) error {
		var err error
		switch string(name) {
		case "role":
			d.Role, err = s.text()
		case "content":
			d.Content, err = s.text()
		case "reasoning_content":
			d.ReasoningContent, err = s.text()
		case "reasoning":
			d.Reasoning, err = s.text()
		case "tool_calls":
			d.ToolCalls, err = s.raw(d.ToolCalls)
		case "function_call":
			d.FunctionCall, err = s.raw(d.FunctionCall)
		default:
			err = s.skip(4)
		}
		return err
	})
}
