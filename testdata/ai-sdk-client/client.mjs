// The Vercel AI SDK against an rbee node: generateText and streamText with
// the OpenAI provider's default model (the Responses API, POST /v1/responses)
// and with its chat model (POST /v1/chat/completions); then a Responses
// follow-up naming the previous response, which must reach the worker that
// made it. Exits non-zero with the reason on any failure.
// Usage: node client.mjs BASE_URL MODEL
import { createOpenAI } from "@ai-sdk/openai";
import { generateText, streamText } from "ai";

const [baseURL, model] = process.argv.slice(2);
if (!baseURL || !model) {
  console.error("usage: node client.mjs http://127.0.0.1:7833/v1 MODEL");
  process.exit(2);
}
const openai = createOpenAI({ baseURL, apiKey: process.env.RBEE_API_KEY || "x" });

function check(cond, what) {
  if (!cond) throw new Error(what);
}

async function both(name, lm) {
  const gen = await generateText({ model: lm, prompt: "Say hello", maxRetries: 0 });
  check(gen.text.length > 0, `${name} generateText: empty text (finish reason ${gen.finishReason})`);
  console.log(`${name} generateText: ${JSON.stringify(gen.text)} (${gen.finishReason}, ${gen.usage.outputTokens} tokens)`);

  // streamText does not throw: a failure ends the stream and goes here.
  let failure = null;
  const st = streamText({ model: lm, prompt: "Stream something", maxRetries: 0, onError: ({ error }) => (failure = error) });
  let text = "";
  let parts = 0;
  for await (const delta of st.textStream) {
    text += delta;
    parts++;
  }
  check(failure === null, `${name} streamText: ${failure}`);
  check(text.length > 0, `${name} streamText: empty text after ${parts} parts`);
  console.log(`${name} streamText: ${parts} parts, ${JSON.stringify(text)} (${await st.finishReason})`);
  return gen;
}

try {
  const first = await both("responses", openai(model));
  const id = first.providerMetadata?.openai?.responseId;
  check(typeof id === "string" && id.startsWith("resp_"), `responses: no response id in ${JSON.stringify(first.providerMetadata)}`);
  const next = await generateText({
    model: openai(model),
    prompt: "And then?",
    maxRetries: 0,
    providerOptions: { openai: { previousResponseId: id } },
  });
  check(next.text.length > 0, `responses follow-up of ${id}: empty text`);
  console.log(`responses follow-up of ${id}: ${JSON.stringify(next.text)}`);
  await both("chat", openai.chat(model));
} catch (err) {
  console.error(`FAIL: ${err?.stack ?? err}`);
  if (err?.responseBody) console.error(`response body: ${err.responseBody}`);
  process.exit(1);
}
console.log("OK");
