// The official `openai` npm client against `loom serve`, run by
// tests/serve/test_openai_cli.cpp as
//   node client.mjs '{"baseURL": "http://127.0.0.1:PORT/v1", "model": "gpt", "prompt": "...",
//                    "max_tokens": N, "completion": "...", "messages": [...], "chat": "..."}'
// where "completion" and "chat" are the greedy texts the server gave curl.
// It streams a completion and a chat completion, and checks them, the model
// list and a refused request. Prints "ok" and exits 0, or names what
// differed and exits 1.
import OpenAI from 'openai';

const want = JSON.parse(process.argv[2]);
const client = new OpenAI({ baseURL: want.baseURL, apiKey: 'unused', maxRetries: 0, timeout: 60000 });
const failures = [];
function check(cond, what) {
  if (!cond) failures.push(what);
}

// GET /v1/models
const models = [];
for await (const m of client.models.list()) models.push(m.id);
check(models.includes(want.model), `models.list() gives ${JSON.stringify(models)}, without ${want.model}`);

// A streamed completion: the concatenated text deltas are the greedy text.
{
  const stream = await client.completions.create({
    model: want.model, prompt: want.prompt, max_tokens: want.max_tokens, temperature: 0, stream: true,
  });
  let text = '';
  let finish = null;
  for await (const chunk of stream) {
    for (const choice of chunk.choices) {
      text += choice.text;
      if (choice.finish_reason) finish = choice.finish_reason;
    }
  }
  check(text === want.completion, `streamed completion ${JSON.stringify(text)} != ${JSON.stringify(want.completion)}`);
  check(finish === 'length' || finish === 'stop', `completion finish_reason ${finish}`);
}

// A streamed chat completion, with usage in its last chunk.
{
  const stream = await client.chat.completions.create({
    model: want.model, messages: want.messages, max_tokens: want.max_tokens, temperature: 0, stream: true,
    stream_options: { include_usage: true },
  });
  let text = '';
  let role = null;
  let finish = null;
  let usage = null;
  for await (const chunk of stream) {
    for (const choice of chunk.choices) {
      if (choice.delta.role) role = choice.delta.role;
      if (choice.delta.content) text += choice.delta.content;
      if (choice.finish_reason) finish = choice.finish_reason;
    }
    if (chunk.usage) usage = chunk.usage;
  }
  check(role === 'assistant', `chat stream role ${role}`);
  check(text === want.chat, `streamed chat ${JSON.stringify(text)} != ${JSON.stringify(want.chat)}`);
  check(finish === 'length' || finish === 'stop', `chat finish_reason ${finish}`);
  check(usage && usage.total_tokens === usage.prompt_tokens + usage.completion_tokens && usage.completion_tokens > 0,
        `chat usage ${JSON.stringify(usage)}`);
}

// The same chat, not streamed.
{
  const chat = await client.chat.completions.create({
    model: want.model, messages: want.messages, max_tokens: want.max_tokens, temperature: 0,
  });
  check(chat.object === 'chat.completion', `chat object ${chat.object}`);
  check(chat.choices[0].message.content === want.chat,
        `chat content ${JSON.stringify(chat.choices[0].message.content)} != ${JSON.stringify(want.chat)}`);
}

// A refused request is the client's BadRequestError, naming the field.
try {
  await client.completions.create({ model: want.model, prompt: want.prompt, temperature: -1 });
  failures.push('temperature -1 was accepted');
} catch (e) {
  check(e instanceof OpenAI.BadRequestError, `temperature -1 threw ${e}`);
  check(e.status === 400 && e.param === 'temperature', `temperature -1: status ${e.status}, param ${e.param}`);
}
try {
  await client.completions.create({ model: 'no-such-model', prompt: want.prompt });
  failures.push('an unknown model was accepted');
} catch (e) {
  check(e instanceof OpenAI.NotFoundError, `an unknown model threw ${e}`);
}

if (failures.length) {
  console.log(failures.join('\n'));
  process.exit(1);
}
console.log('ok');
