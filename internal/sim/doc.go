// Package sim is `rbee worker simulate`: an inference worker that speaks the
// HTTP API of llama.cpp's llama-server (the OpenAI endpoints, /props,
// /health), and OpenAI's Responses API, without a model or a GPU, so that the demo, the end-to-end tests
// and the benchmarks exercise rbee's real proxy path.
//
// A Simulator serves a fixed number of slots as llama-server does: a request
// beyond them waits for one. It generates deterministic readable text (see
// Text), paced at a configured rate after a configured time to first token,
// streamed as server-sent events when asked. It stops at once when the client
// goes away, and counts what happened (Stats), so that tests can prove a
// router never sent it more concurrent requests than it has slots. AbortAll
// breaks every in-flight request mid-way, as a worker that dies would. With
// Config.LoadTime it first answers 503 "Loading model" for a while, as
// llama-server does while it loads the weights. With Config.PrefixCache it
// keeps a prefix (KV) cache, as llama-server's prompt cache: the time to
// first token grows with the prompt tokens it has not seen before, so a
// conversation's next turn is quicker on the worker that served the last.
//
// A request can ask it to go on with an answer cut short, as rbee's entry
// node does when it migrates a stream off a worker that died: a chat
// completion or response whose last message is the assistant's, or a
// completion whose prompt ends with text, continues from there when that
// text is the start of the simulator's answer (see Continues), byte for
// byte as if the answer had never been cut, mid-token included. A chat
// completion takes the message as llama-server and Ollama do, or with
// vLLM's "continue_final_message": true (and answers vLLM's 400 when
// "add_generation_prompt" is true too). The request's own limit counts the
// new tokens; without one the answer ends where the uninterrupted one
// would, at Config.MaxTokens tokens in all. Usage counts the new tokens as
// completion tokens and the text so far as prompt. Text that is not the
// start of the answer gets a fresh one, as from a model that would not
// have written it.
//
// A chat completion or response that offers functions (tools) is answered
// with a call of one of them, its arguments a JSON document valid against
// the function's schema; one that asks for JSON (response_format,
// text.format) gets a document valid against its schema; both derived
// from the conversation, streamed as OpenAI streams them (see shape and
// exampleJSON). Once the conversation ends with a tool's result, the
// answer is text, so that an agent's loop ends.
//
// Two endpoints are its own: GET /rbee/sim/gpu gives made-up GPU figures that
// follow the load (a hive's collector reports them, marked simulated, for
// workers whose /props says "rbee_simulated": true), and GET /rbee/sim/stats
// gives Stats.
//
// The package never owns the process: it serves an http.Handler, starts no
// goroutine of its own (each request is served on the goroutine net/http
// gives it), reads no flags or environment, and owns no listener.
package sim
