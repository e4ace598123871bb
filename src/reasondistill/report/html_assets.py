"""Inline CSS and JavaScript of ``report.html`` (no CDN, no network: the page works from a file).

The script renders the trace viewer from the JSON in ``<script id="trace-data">`` (filters: model,
verdict, failure mode, difficulty, text search), records any error into ``#status``, and, when the
page is opened with ``#selftest`` in the URL, checks itself (tables filled, every image decoded,
filters change what is shown) and writes the outcome as JSON into ``<pre id="selftest">`` so a
headless browser's ``--dump-dom`` reveals it.
"""

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1400px;padding:1em 2em;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.9em;margin:.5em 0}th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}.ci{color:#777;font-size:.85em}
.plots{display:flex;flex-wrap:wrap;gap:1em}.plots figure{margin:0;border:1px solid #eee;padding:.4em}
.plots img{max-width:400px;height:auto}figcaption{font-size:.85em;color:#555}
#filters{display:flex;flex-wrap:wrap;gap:.8em;align-items:center;background:#fafafa;padding:.6em;border:1px solid #ddd}
.problem{border:1px solid #ddd;margin:.6em 0;padding:.4em .6em}.problem h3{font-size:.95em;margin:.2em 0}
.outs{display:grid;gap:.5em}.out{border-left:4px solid #999;padding:.2em .5em;background:#fcfcfc;overflow:auto}
.out.correct{border-color:#2a2}.out.wrong{border-color:#c33}.out.truncated,.out.unparseable{border-color:#e90}
.out pre{white-space:pre-wrap;margin:.2em 0;font-size:.85em}.tag{font-size:.8em;padding:0 .4em;border-radius:3px;background:#eee}
#status{font-size:.8em;color:#777}.muted{color:#777}
"""

JS = r"""
(function(){
  var status = document.getElementById('status');
  var errors = [];
  window.addEventListener('error', function(e){ errors.push(String(e.message)); status.dataset.status = 'error';
    status.textContent = 'error: ' + errors.join('; '); });
  var data = JSON.parse(document.getElementById('trace-data').textContent);
  var $ = function(id){ return document.getElementById(id); };
  function opt(sel, values){ values.forEach(function(v){ var o = document.createElement('option');
    o.value = v; o.textContent = v; sel.appendChild(o); }); }
  opt($('f-model'), data.models);
  opt($('f-mode'), data.modes);
  opt($('f-diff'), data.difficulties.map(String));
  var LIMIT = 60;
  function matches(p, f){
    if (f.diff && String(p.difficulty) !== f.diff) return false;
    var o = p.outputs[f.model];
    if (f.verdict || f.mode){ if (!o) return false;
      if (f.verdict === 'correct' && o.verdict !== 'correct') return false;
      if (f.verdict === 'wrong' && o.verdict === 'correct') return false;
      if (f.mode && o.failure !== f.mode) return false; }
    if (f.q){ var hay = (p.prompt + ' ' + p.reference + ' ' + data.models.map(function(m){
        return p.outputs[m] ? p.outputs[m].text : ''; }).join(' ')).toLowerCase();
      if (hay.indexOf(f.q) < 0) return false; }
    return true;
  }
  function filters(){ return {model: $('f-model').value, verdict: $('f-verdict').value, mode: $('f-mode').value,
    diff: $('f-diff').value, q: $('f-q').value.trim().toLowerCase()}; }
  function el(tag, cls, text){ var e = document.createElement(tag); if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text; return e; }
  function render(){
    var f = filters(), list = $('traces'), shown = data.problems.filter(function(p){ return matches(p, f); });
    list.textContent = '';
    shown.slice(0, LIMIT).forEach(function(p){
      var box = el('div', 'problem'); box.dataset.id = p.id; box.dataset.difficulty = p.difficulty;
      box.appendChild(el('h3', null, p.prompt + '  →  ' + p.reference + '   (difficulty ' + p.difficulty + ')'));
      var outs = el('div', 'outs'); outs.style.gridTemplateColumns = 'repeat(' + data.models.length + ', 1fr)';
      data.models.forEach(function(m){ var o = p.outputs[m];
        var c = el('div', 'out ' + (o ? o.verdict : 'missing')); c.dataset.model = m;
        if (o){ c.dataset.verdict = o.verdict; c.dataset.failure = o.failure; }
        c.appendChild(el('b', null, m + ' '));
        c.appendChild(el('span', 'tag', o ? o.verdict + (o.failure && o.failure !== o.verdict ? ' · ' + o.failure : '') : 'not evaluated'));
        if (o) c.appendChild(el('pre', null, o.text));
        outs.appendChild(c); });
      box.appendChild(outs); list.appendChild(box); });
    $('shown-count').textContent = shown.length + ' of ' + data.problems.length + ' problems match' +
      (shown.length > LIMIT ? ' (first ' + LIMIT + ' shown)' : '');
    $('shown-count').dataset.n = shown.length;
    return shown.length;
  }
  ['f-model','f-verdict','f-mode','f-diff'].forEach(function(id){ $(id).addEventListener('change', render); });
  $('f-q').addEventListener('input', render);
  render();
  window.reportViewer = {render: render, data: data};
  function selftest(){
    var checks = [], total = data.problems.length;
    function check(name, ok, detail){ checks.push({name: name, ok: !!ok, detail: detail === undefined ? '' : String(detail)}); }
    var rows = document.querySelectorAll('#models-table tbody tr').length;
    check('models table has rows', rows > 0, rows);
    var imgs = Array.prototype.slice.call(document.querySelectorAll('img'));
    check('plots present', imgs.length > 0, imgs.length);
    var broken = imgs.filter(function(i){ return !(i.complete && i.naturalWidth > 0); }).map(function(i){ return i.alt; });
    check('every plot decoded', broken.length === 0, broken.join(','));
    check('viewer shows all problems unfiltered', render() === total, total);
    var m = data.models[0], nCorrect = data.problems.filter(function(p){ return p.outputs[m] && p.outputs[m].verdict === 'correct'; }).length;
    $('f-model').value = m; $('f-verdict').value = 'correct';
    var got = render();
    var visible = document.querySelectorAll('#traces .out[data-model="' + m + '"]');
    var allOk = Array.prototype.every.call(visible, function(e){ return e.dataset.verdict === 'correct'; });
    check('filter correct: count', got === nCorrect, got + ' vs ' + nCorrect);
    check('filter correct: only correct shown', allOk, visible.length);
    $('f-verdict').value = 'wrong';
    check('filter wrong: complement', render() === total - nCorrect, total - nCorrect);
    $('f-verdict').value = '';
    if (data.difficulties.length){ var d = String(data.difficulties[0]);
      var nd = data.problems.filter(function(p){ return String(p.difficulty) === d; }).length;
      $('f-diff').value = d; check('filter difficulty', render() === nd, nd); $('f-diff').value = ''; }
    if (total){ var q = data.problems[0].prompt; $('f-q').value = q;
      var nq = render(); check('search by text finds the problem', nq >= 1 && nq <= total, nq); $('f-q').value = ''; }
    check('no errors', errors.length === 0, errors.join('; '));
    render();
    var ok = checks.every(function(c){ return c.ok; });
    var out = $('selftest'); out.textContent = JSON.stringify({ok: ok, checks: checks});
    out.dataset.result = ok ? 'pass' : 'fail';
  }
  if (location.hash === '#selftest'){
    if (document.readyState === 'complete') selftest(); else window.addEventListener('load', selftest);
  }
  if (!errors.length){ status.dataset.status = 'ok'; status.textContent = 'viewer ready'; }
})();
"""
