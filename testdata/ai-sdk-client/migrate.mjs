// The Vercel AI SDK reading streams that rbee migrates: streamText with the
// OpenAI provider's default model (the Responses API) and its chat model,
// each with max output tokens N. After K text parts of each it prints
// "CUT <api>" and reads on while the test kills the hive serving it; at the
// end it prints the text and usage ("TEXT <api> <json>"). Any error fails.
// Usage: node migrate.mjs BASE_URL MODEL N K
import { createOpenAI } from "@ai-sdk/openai";
import { streamText } from "ai";

const [baseURL, model, n, k] = process.argv.slice(2);
const openai = createOpenAI({ baseURL, apiKey: process.env.RBEE_API_KEY || "x" });
const N = Number(n), K = Number(k);

try {
  for (const [name, lm] of [["responses", openai(model)], ["chat", openai.chat(model)]]) {
    let failure = null;
    const st = streamText({ model: lm, prompt: `ai sdk ${name}`, maxOutputTokens: N, maxRetries: 0, onError: ({ error }) => (failure = error) });
    let text = "", parts = 0;
    for await (const delta of st.textStream) {
      text += delta;
      if (++parts === K) console.log(`CUT ${name}`);
    }
    if (failure !== null) throw failure;
    const usage = await st.usage;
    console.log(`TEXT ${name} ` + JSON.stringify({ text, finish: await st.finishReason, completion: usage.outputTokens }));
  }
} catch (err) {
  console.error(`FAIL: ${err?.stack ?? err}`);
  if (err?.responseBody) console.error(`response body: ${err.responseBody}`);
  process.exit(1);
}
console.log("OK");
