// A JavaScript component action: `mypack.deploy`, the JavaScript twin of
// examples/deploy-component.
//
// Parameters arrive as JSON on stdin ({"target": "staging"}), the result is the JSON this
// prints, failure is a non-zero exit (Attune's action convention). It reads `api_key` and
// `db_password` through the `get-secret` import of attune-wasm (wit/action.wit) and prints only
// what is safe to print about them: their length in UTF-8 bytes and a SHA-256 prefix, never the
// values. Without `api_key` it prints the result, writes a line to stderr and exits with 1.
//
// Build: see README.md (componentize-js, world `js-action` in wit/).

import { getSecret } from 'attune:action/secrets@0.1.0';
import { getEnvironment } from 'wasi:cli/environment@0.2.12';
import { exit } from 'wasi:cli/exit@0.2.12';
import { getStdin } from 'wasi:cli/stdin@0.2.12';

const utf8 = new TextEncoder();

// Length and SHA-256 prefix of secret `name`, or the WIT error it got (e.g. `not-found`).
async function describe(name) {
  let value;
  try {
    value = getSecret(name);
  } catch (e) {
    return { error: String(e.payload) };
  }
  const data = utf8.encode(value);
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', data));
  const prefix = [...digest.slice(0, 4)].map((b) => b.toString(16).padStart(2, '0')).join('');
  return { len: data.length, sha256_prefix: prefix };
}

// The JSON object on stdin, or {} when stdin is empty or not a JSON object.
function readParams() {
  const stdin = getStdin();
  const chunks = [];
  for (;;) {
    try {
      chunks.push(stdin.blockingRead(65536n));
    } catch {
      break; // closed: end of input
    }
  }
  const bytes = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  chunks.reduce((at, c) => (bytes.set(c, at), at + c.length), 0);
  const text = new TextDecoder().decode(bytes);
  try {
    const params = JSON.parse(text || '{}');
    return params && typeof params === 'object' && !Array.isArray(params) ? params : {};
  } catch {
    return {};
  }
}

async function main() {
  const params = readParams();
  const env = Object.fromEntries(getEnvironment());
  const apiKey = await describe('api_key');
  const ok = !('error' in apiKey);
  const result = {
    action: env.ATTUNE_ACTION_REF ?? '',
    door: 'get-secret',
    language: 'javascript',
    target: typeof params.target === 'string' ? params.target : 'staging',
    deployed: ok,
    api_key: apiKey,
    db_password: await describe('db_password'),
  };
  console.log(JSON.stringify(result));
  if (!ok) {
    console.error('deploy failed: api_key is required');
    exit({ tag: 'err' });
  }
}

// `wasi:cli/run`. The digests are promises: the engine runs its event loop after `run`
// returns, so the result is printed, and the failure exit taken, from there.
export const run = {
  run() {
    main().catch((e) => {
      console.error(`deploy failed: ${e}`);
      exit({ tag: 'err' });
    });
  },
};
