// Accepts an API key the ways clients send one: a Bearer token (OpenAI clients, Claude Code's
// ANTHROPIC_AUTH_TOKEN), the password of HTTP Basic auth with any user name (curl -u), or the
// x-api-key header (Anthropic SDKs). nginx holds only the keys' SHA-256 digests ($slm_keys,
// "id:digest" comma-separated): a presented key is digested and compared with each, so the
// comparison's timing does not depend on how much of a key a guess got right.
const crypto = require('crypto');

function digest(value) {
    return crypto.createHash('sha256').update(value).digest('hex');
}

function fromAuthorization(header) {
    const m = header.match(/^(Bearer|Basic)[ ]+([^ ]+)[ ]*$/i);
    if (!m) {
        return null;
    }
    if (m[1].toLowerCase() === 'bearer') {
        return m[2];
    }
    const decoded = Buffer.from(m[2], 'base64').toString();
    const colon = decoded.indexOf(':');
    return colon < 0 ? null : decoded.slice(colon + 1);
}

// Every credential the request carries (a client may send both headers).
function presented(r) {
    const found = [];
    const authorization = fromAuthorization(r.headersIn['Authorization'] || '');
    if (authorization !== null) {
        found.push(authorization);
    }
    const apiKey = r.headersIn['X-Api-Key'];
    if (apiKey) {
        found.push(apiKey);
    }
    return found;
}

// The id of the key presented ($slm_key_id: access log, per-key rate limit), or '' for none.
function keyId(r) {
    const entries = (r.variables.slm_keys || '').split(',');
    const given = presented(r);
    let id = '';
    for (let g = 0; g < given.length; g++) {  // njs 0.7 (bookworm) has no for...of
        const d = digest(given[g]);
        for (let i = 0; i < entries.length; i++) {
            const entry = entries[i];
            const colon = entry.indexOf(':');
            if (colon > 0 && entry.slice(colon + 1) === d && !id) {
                id = entry.slice(0, colon);
            }
        }
    }
    return id;
}

function verdict(r) {
    return r.variables.slm_key_id ? '1' : '0';
}

// The answer to a request without a valid key (nginx sends it there after the failure rate limit),
// in the error shape of the API asked: Anthropic clients read {"type":"error","error":{...}}.
function unauthorized(r) {
    const message = 'Missing or invalid API key';
    const anthropic = /^\/v1\/messages([/?]|$)/.test(r.variables.request_uri || '');
    const body = anthropic ? {type: 'error', error: {type: 'authentication_error', message: message}}
                           : {error: {message: message, type: 'authentication_error', code: 401}};
    r.return(401, JSON.stringify(body) + '\n');
}

// Token counts of a generation for the access log ($slm_tokens_in, $slm_tokens_out), read from the
// engine's answer as it passes, streamed or not, in each API's own words: OpenAI's usage (prompt
// counts include the cached part), Anthropic's (input_tokens excludes it: the cache counts are
// added) and, for a stream without usage, the engine's timings. A key's usage is the sum of the
// lines with its id. The data goes on first and unchanged: the stream is never held back. The
// last bytes of a chunk are scanned again with the next, so a count cut in two is read whole.
const USAGE = /"(prompt_tokens|completion_tokens|input_tokens|output_tokens|cache_read_input_tokens|cache_creation_input_tokens|prompt_n|cache_n|predicted_n)":\s*(\d+)/g;

function countTokens(r, data, flags) {
    r.sendBuffer(data, flags);
    const text = r.variables.slm_usage_tail + data.toString();
    const seen = JSON.parse(r.variables.slm_usage || '{}');
    let m;
    USAGE.lastIndex = 0;
    while ((m = USAGE.exec(text)) !== null) {
        seen[m[1]] = Number(m[2]);  // the last value wins: final events carry the totals
    }
    r.variables.slm_usage = JSON.stringify(seen);
    r.variables.slm_usage_tail = text.slice(-60);
}

function sum(seen, names) {
    let total = null;
    for (let i = 0; i < names.length; i++) {
        if (seen[names[i]] !== undefined) {
            total = (total || 0) + seen[names[i]];
        }
    }
    return total;
}

function counted(r, openai, anthropic, timings) {
    const seen = JSON.parse(r.variables.slm_usage || '{}');
    const n = [sum(seen, openai), sum(seen, anthropic), sum(seen, timings)].filter(v => v !== null);
    return n.length ? String(n[0]) : '-';
}

function tokensIn(r) {
    return counted(r, ['prompt_tokens'], ['input_tokens', 'cache_read_input_tokens', 'cache_creation_input_tokens'],
                   ['prompt_n', 'cache_n']);
}

function tokensOut(r) {
    return counted(r, ['completion_tokens'], ['output_tokens'], ['predicted_n']);
}

export default { keyId, verdict, unauthorized, countTokens, tokensIn, tokensOut };
