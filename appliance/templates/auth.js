// Accepts an API key as a Bearer token (OpenAI clients) or as the password of HTTP Basic auth
// with any user name (curl -u). nginx holds only the keys' SHA-256 digests ($slm_keys, "id:digest"
// comma-separated): a presented key is digested and compared with each, so the comparison's timing
// does not depend on how much of a key a guess got right.
const crypto = require('crypto');

function digest(value) {
    return crypto.createHash('sha256').update(value).digest('hex');
}

function presented(r) {
    const header = r.headersIn['Authorization'] || '';
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

// The id of the key presented ($slm_key_id: access log, per-key rate limit), or '' for none.
function keyId(r) {
    const given = presented(r);
    if (given === null) {
        return '';
    }
    const d = digest(given);
    const entries = (r.variables.slm_keys || '').split(',');
    let id = '';
    for (let i = 0; i < entries.length; i++) {  // njs 0.7 (bookworm) has no for...of
        const entry = entries[i];
        const colon = entry.indexOf(':');
        if (colon > 0 && entry.slice(colon + 1) === d) {
            id = entry.slice(0, colon);
        }
    }
    return id;
}

function verdict(r) {
    return r.variables.slm_key_id ? '1' : '0';
}

// The answer to a request without a valid key (nginx sends it there after the failure rate limit).
function unauthorized(r) {
    r.return(401, JSON.stringify({error: {message: 'Missing or invalid API key', type: 'authentication_error',
                                          code: 401}}) + '\n');
}

export default { keyId, verdict, unauthorized };
