// The official openai npm client against an rbee node: a models list, one
// non-streaming and one streaming chat completion, and embeddings. Exits
// non-zero with the reason on any failure. Usage: node client.mjs BASE_URL MODEL
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
console.log("OK");
