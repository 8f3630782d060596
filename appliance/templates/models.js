// GET /v1/models as coding agents read it. The engine's list names the model and its context
// (meta.n_ctx) but not in the fields clients look for, and it never says whether the model can call
// tools: a client of a model whose template has none sends tools that the engine drops in silence.
// So the list gains what OpenRouter-style clients read (context_length, supported_parameters) and
// "tools" in the Ollama-style capabilities, taken from the running engine's /props on every request:
// the list cannot claim what the served template does not do, whatever model is swapped in.
const PARAMETERS = ['max_tokens', 'temperature', 'top_p', 'stop', 'stream'];
const TOOL_PARAMETERS = ['tools', 'tool_choice'];

function listing(r) {
    Promise.all([r.subrequest('/_slm_engine/v1/models'), r.subrequest('/_slm_engine/props')])
        .then(function (replies) {
            const failed = replies.filter(reply => reply.status !== 200);
            if (failed.length) {  // loading or down: the engine's answer (nginx's 503) as it is
                r.return(failed[0].status, failed[0].responseText);
                return;
            }
            const list = JSON.parse(replies[0].responseText);
            const caps = JSON.parse(replies[1].responseText).chat_template_caps || {};
            const tools = caps.supports_tool_calls === true;
            (list.data || []).forEach(function (model) {
                model.context_length = (model.meta || {}).n_ctx;
                model.supported_parameters = tools ? PARAMETERS.concat(TOOL_PARAMETERS) : PARAMETERS;
            });
            (list.models || []).forEach(function (model) {
                const capabilities = (model.capabilities || []).filter(c => c !== 'tools');
                model.capabilities = tools ? capabilities.concat(['tools']) : capabilities;
            });
            r.return(200, JSON.stringify(list) + '\n');
        })
        .catch(function (err) {
            r.error('the model list could not be built: ' + err);
            r.return(502);
        });
}

export default { listing };
