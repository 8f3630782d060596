// Accepts the API key as a Bearer token (OpenAI clients) or as the password of HTTP Basic auth
// with any user name (curl -u). Comparing digests keeps the comparison's timing independent of
// how much of the key a guess got right.
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

function verdict(r) {
    const key = r.variables.slm_api_key;
    const given = presented(r);
    return (key && given !== null && digest(given) === digest(key)) ? '1' : '0';
}

export default { verdict };
