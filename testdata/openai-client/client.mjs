// The official openai npm client against an rbee node: a models list, one
// non-streaming and one streaming chat completion, embeddings, the Responses
// API (plain, streamed, and a follow-up naming the previous response), and
// the error an unknown model gets. Exits non-zero with the reason on any
// failure. Usage: node client.mjs BASE_URL MODEL
import OpenAI from "openai";

const [baseURL, model] = process.argv.slice(2);
if (!baseURL || !model) {
  console.error("usage: node client.mjs http://127.0.0.1:7833/v1 MODEL");
  process.exit(2);
}
const client = new OpenAI({ baseURL, apiKey: process.env.RBEE_API_KEY || "none", maxRetries: 0, timeout: 30000 });

function check(cond, what) {
  if (!cond) throw new Error(what);
}

const models = await client.models.list();
const ids = models.data.map((m) => m.id);
check(ids.includes(model), `models.list: ${JSON.stringify(ids)} lacks ${model}`);
console.log(`models: ${ids.join(", ")}`);

const done = await client.chat.completions.create({
  model,
  messages: [{ role: "user", content: "Say hello" }],
  max_tokens: 8,
});
const text = done.choices[0]?.message?.content ?? "";
check(text.length > 0, `non-streaming: empty content in ${JSON.stringify(done)}`);
check(done.usage && done.usage.completion_tokens > 0, `non-streaming: no usage in ${JSON.stringify(done)}`);
console.log(`chat: ${JSON.stringify(text)} (${done.usage.completion_tokens} tokens)`);

const stream = await client.chat.completions.create({
  model,
  messages: [{ role: "user", content: "Stream something" }],
  max_tokens: 8,
  stream: true,
});
let chunks = 0;
let streamed = "";
let finish = null;
for await (const chunk of stream) {
  chunks++;
  streamed += chunk.choices[0]?.delta?.content ?? "";
  finish = chunk.choices[0]?.finish_reason ?? finish;
}
check(chunks >= 2 && streamed.length > 0, `streaming: ${chunks} chunks, text ${JSON.stringify(streamed)}`);
check(finish !== null, "streaming: no finish_reason");
console.log(`stream: ${chunks} chunks, ${JSON.stringify(streamed)}, finish_reason ${finish}`);

const emb = await client.embeddings.create({ model, input: ["one", "two"] });
check(emb.data.length === 2 && emb.data[0].embedding.length > 0, `embeddings: ${JSON.stringify(emb).slice(0, 200)}`);
console.log(`embeddings: ${emb.data.length} x ${emb.data[0].embedding.length}`);

const resp = await client.responses.create({ model, input: "Say hello", instructions: "Be brief." });
check(resp.object === "response" && resp.id.startsWith("resp_"), `responses: ${JSON.stringify(resp).slice(0, 300)}`);
check(resp.output_text.length > 0, `responses: empty output_text in ${JSON.stringify(resp).slice(0, 300)}`);
check(resp.usage && resp.usage.output_tokens > 0, `responses: no usage in ${JSON.stringify(resp).slice(0, 300)}`);
console.log(`responses: ${resp.id} ${resp.status} ${JSON.stringify(resp.output_text)}`);

// A follow-up must reach the worker that holds the previous response: a
// simulated worker refuses a response id it did not make.
const next = await client.responses.create({ model, input: "And then?", previous_response_id: resp.id });
check(next.output_text.length > 0 && next.previous_response_id === resp.id, `follow-up: ${JSON.stringify(next).slice(0, 300)}`);
console.log(`responses follow-up: ${next.id} after ${next.previous_response_id}`);

const events = await client.responses.create({ model, input: [{ role: "user", content: "Stream something" }], stream: true });
const types = [];
let deltas = "";
let final = null;
for await (const ev of events) {
  types.push(ev.type);
  if (ev.type === "response.output_text.delta") deltas += ev.delta;
  if (ev.type === "response.completed" || ev.type === "response.incomplete") final = ev.response;
}
check(types[0] === "response.created" && deltas.length > 0 && final !== null, `responses stream: events ${types.join(" ")}, text ${JSON.stringify(deltas)}`);
check(final.output?.[0]?.content?.[0]?.text === deltas, `responses stream: final text differs from the deltas`);
console.log(`responses stream: ${types.length} events, ${JSON.stringify(deltas)}, ${final.status}`);

for (const [what, call] of [
  ["chat", () => client.chat.completions.create({ model: "no-such-model", messages: [{ role: "user", content: "x" }] })],
  ["responses", () => client.responses.create({ model: "no-such-model", input: "x" })],
]) {
  let err = null;
  try {
    await call();
  } catch (e) {
    err = e;
  }
  check(err !== null, `unknown model (${what}): no error`);
  check(err.status === 404 && err.code === "model_not_found", `unknown model (${what}): status ${err.status}, code ${err.code}: ${err.message}`);
  console.log(`unknown model (${what}): ${err.status} ${err.code}`);
}
console.log("OK");
