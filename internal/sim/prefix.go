package sim

import (
	"container/list"
	"hash/fnv"
	"slices"
	"sync"
	"time"
)

// The simulated prefix (KV) cache, as llama-server's prompt cache: a worker
// that has seen the start of a prompt before skips processing it, so a
// conversation's next turn, sent back to the same worker, gets its first
// token sooner. Prompts are tokenized as the simulator counts their tokens
// (see countTokens: four bytes of text a token, three framing tokens a
// message) and hashed a token at a time; the cache holds the running hash at
// every blockTokens-th token, so that a block's hash stands for the whole
// prefix up to it.

// blockTokens is the cache's granularity: llama-server matches prompts token
// by token, but hashing every 16th token keeps a lookup O(prompt length)
// with a small map, and a conversation's turns are far longer than this.
const blockTokens = 16

// Token values, kept apart by their high bits so that text, framing and
// token ids never hash alike.
const (
	textTokenTag  = 1 << 60 // len<<32 | up to 4 bytes of text
	frameTokenTag = 2 << 60 // a message's framing
	idTokenTag    = 3 << 60 // a token id, mixed in as is
)

// promptHash is a prompt as the prefix cache sees it: how many tokens it has
// and the hash of its prefix at every block boundary.
type promptHash struct {
	h      uint64   // hash of every token so far
	n      int      // tokens so far
	blocks []uint64 // h after blockTokens, 2×blockTokens... tokens
	// open says the last token was the short end of a text (fewer than
	// four bytes), which more text would continue: openText is those bytes
	// and openH the hash before them.
	open     bool
	openText string
	openH    uint64
}

// add appends one token.
func (p *promptHash) add(t uint64) {
	p.h = mix64((p.h ^ t) * 0x9e3779b97f4a7c15)
	p.n++
	if p.n%blockTokens == 0 {
		p.blocks = append(p.blocks, p.h)
	}
}

// text appends s's tokens: countTokens(s) of them.
func (p *promptHash) text(s string) {
	p.open = false
	for len(s) > 0 {
		k := min(len(s), 4)
		if k < 4 {
			p.open, p.openText, p.openH = true, s, p.h
		}
		var t uint64 = textTokenTag | uint64(k)<<32
		for i := range k {
			t |= uint64(s[i]) << (8 * i)
		}
		p.add(t)
		s = s[k:]
	}
}

// message appends a chat message: three framing tokens, as a chat template
// adds, then its text.
func (p *promptHash) message(role, text string) {
	p.open = false
	h := fnv.New64a()
	_, _ = h.Write([]byte(role))
	p.add(frameTokenTag | 1)
	p.add(frameTokenTag | h.Sum64()>>4)
	p.add(frameTokenTag | 2)
	p.text(text)
}

// ids appends token ids.
func (p *promptHash) ids(ids []int64) {
	p.open = false
	for _, id := range ids {
		p.add(idTokenTag ^ uint64(id))
	}
}

// withAnswer returns the prompt the next turn of the conversation starts
// with: p and then the answer, as an assistant message when messages (chat,
// responses), else as text continuing the prompt's (completions). p is
// unchanged.
func (p *promptHash) withAnswer(answer string, messages bool) promptHash {
	q := *p
	q.blocks = slices.Clip(q.blocks)
	if messages {
		q.message("assistant", answer)
		return q
	}
	if q.open {
		// The prompt's last token was short: the answer's bytes join it.
		q.h, q.n = q.openH, q.n-1
		q.blocks = q.blocks[:q.n/blockTokens]
		answer = q.openText + answer
	}
	q.text(answer)
	return q
}

// mix64 is splitmix64's finalizer: every output bit depends on every input
// bit.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// prefixCache is the prefix blocks a worker holds, least recently used
// evicted first. Safe for concurrent use.
type prefixCache struct {
	mu    sync.Mutex
	max   int        // blocks
	lru   *list.List // of uint64 block hashes, most recently used first
	index map[uint64]*list.Element
}

func newPrefixCache(tokens int) *prefixCache {
	return &prefixCache{max: tokens / blockTokens, lru: list.New(), index: make(map[uint64]*list.Element)}
}

// lookup returns how many of a prompt's first tokens are cached: its
// blocks from the first up to the first missing one. The blocks found
// count as used.
func (c *prefixCache) lookup(blocks []uint64) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	k := 0
	for k < len(blocks) && c.index[blocks[k]] != nil {
		k++
	}
	c.touch(blocks[:k])
	return k * blockTokens
}

// insert adds a prompt's blocks, evicting the least recently used beyond
// capacity.
func (c *prefixCache) insert(blocks []uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.touch(blocks)
	for c.lru.Len() > c.max {
		delete(c.index, c.lru.Remove(c.lru.Back()).(uint64))
	}
}

// touch makes blocks the most recently used, adding those missing. The
// last block goes first, so that the first ends most recent: a prefix's
// later blocks are useless without its earlier ones, so they go first.
func (c *prefixCache) touch(blocks []uint64) {
	for _, b := range slices.Backward(blocks) {
		if e := c.index[b]; e != nil {
			c.lru.MoveToFront(e)
		} else {
			c.index[b] = c.lru.PushFront(b)
		}
	}
}

// ttft returns the time from taking a slot to the first token for a prompt
// of which computed tokens are not cached: Config.TTFT, plus
// PrefillPerToken for each of them when the prefix cache is on.
func (c Config) ttft(computed int) time.Duration {
	if !c.PrefixCache || computed <= 0 {
		return c.TTFT
	}
	if c.PrefillPerToken > 0 && time.Duration(computed) > (maxTTFT-c.TTFT)/c.PrefillPerToken {
		return maxTTFT
	}
	return c.TTFT + time.Duration(computed)*c.PrefillPerToken
}

// prefill looks up a generation request's prompt in the prefix cache when it
// takes its slot: how many of its tokens are cached, and the time to its
// first token.
func (s *Simulator) prefill(g *genRequest) (cached int, ttft time.Duration) {
	if s.prefix != nil {
		cached = min(s.prefix.lookup(g.Prompt.blocks), g.PromptTokens)
	}
	return cached, s.cfg.ttft(g.PromptTokens - cached)
}

// answered counts a generation request answered in full, with n tokens of
// which cached were, and caches its prompt and the conversation's next
// prompt (this one with its answer).
func (s *Simulator) answered(g *genRequest, cached, n int) outcome {
	if s.prefix != nil {
		s.prefix.insert(g.Prompt.blocks)
		answer := g.text(n)
		if g.Call != "" {
			// The next turn holds the call as a message with no
			// content, its call aside.
			answer = ""
		}
		next := g.Prompt.withAnswer(answer, g.Messages)
		if c := g.Cont; c != nil && g.Messages {
			// The answer went on in the prompt's last message, not a new one.
			next = c.base.withAnswer(c.prefix+answer, true)
		}
		s.prefix.insert(next.blocks)
	}
	s.countTokens(g.PromptTokens, cached, n)
	return served
}

// countTokens adds a served request's tokens to Stats.
func (s *Simulator) countTokens(prompt, cached, completion int) {
	s.nPrompt.Add(int64(prompt))
	s.nCached.Add(int64(cached))
	s.nComputed.Add(int64(prompt - cached))
	s.nCompletion.Add(int64(completion))
}
