"""The HTML report's inline style sheet and script (no network: both are written into the page)."""

__all__ = ["CSS", "JS"]

CSS = """
:root{--fg:#1d2330;--dim:#6b7280;--line:#e5e7eb;--bg:#fafafa;--card:#fff;--err:#c0392b;--warn:#b7791f;--info:#2b6cb0}
*{box-sizing:border-box}body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
color:var(--fg);background:var(--bg)}header.top{padding:14px 24px;background:#111827;color:#f9fafb}
header.top h1{margin:0;font-size:20px}header.top .dim{color:#9ca3af}header.top p{margin:4px 0 0}
#modnorm-selfcheck{font-size:12px;color:#9ca3af;margin-top:4px}
section.model{margin:18px 24px;padding:16px 20px;background:var(--card);border:1px solid var(--line);border-radius:8px}
h2{margin:0 0 10px;font-size:18px;font-family:ui-monospace,"DejaVu Sans Mono",monospace}h3{margin:22px 0 8px;font-size:15px}
.dim{color:var(--dim);font-weight:normal}.ok{color:#15803d}.warn{color:var(--warn)}.bad{color:var(--err)}
.figures{display:flex;flex-wrap:wrap;gap:8px}.fig{border:1px solid var(--line);border-radius:6px;padding:6px 10px;min-width:110px}
.fig .k{font-size:11px;color:var(--dim);text-transform:uppercase;letter-spacing:.03em}.fig .v{font-size:15px;font-weight:600}
ul.notes{margin:8px 0 0;padding-left:18px;font-size:13px}
.controls{display:flex;flex-wrap:wrap;align-items:center;gap:10px;margin-bottom:6px;font-size:13px}
.legend{display:inline-flex;align-items:center;gap:6px}.legend[hidden]{display:none}
.bar{display:inline-block;width:140px;height:10px;border-radius:2px}
.swatch{display:inline-block;width:12px;height:12px;border-radius:2px;margin:0 4px 0 10px;vertical-align:-1px}
.swatch.grey{background:#b0b0b0}.swatch.bond{background:#9ca3af;border-radius:50%}.swatch.unknown{background:var(--err);border-radius:50%}
.graph{overflow:auto;max-height:560px;border:1px solid var(--line);border-radius:6px;background:#fcfcfd}
.graph-svg .edges path{fill:none;stroke:#c7ccd4;stroke-width:1}
.graph-svg .stream{fill:none;stroke-width:7;stroke-opacity:.35;stroke-linejoin:round;stroke-linecap:round}
.graph-svg .atom{stroke:#111827;stroke-width:1;cursor:pointer}.graph-svg .atom:hover,.graph-svg .atom.hl{stroke-width:3}
.graph-svg .bond{fill:#9ca3af}.graph-svg .bond.uncertified{fill:#f59e0b}.graph-svg .unknown{fill:var(--err)}
.graph-svg .io{fill:#111827}.graph-svg .label{font-size:9px;fill:#4b5563;pointer-events:none}.graph-svg .merge{fill:#fff;stroke:#111827;stroke-width:1.5}
table.layers{border-collapse:collapse;width:100%;font-size:12.5px}
table.layers th{position:sticky;top:0;background:#f3f4f6;text-align:left;padding:5px 8px;border-bottom:1px solid var(--line);cursor:pointer;user-select:none;white-space:nowrap}
table.layers th[aria-sort=ascending]::after{content:" ▲"}table.layers th[aria-sort=descending]::after{content:" ▼"}
table.layers td{padding:3px 8px;border-bottom:1px solid #f0f1f3;white-space:nowrap}td.num{text-align:right;font-variant-numeric:tabular-nums}
table.layers tr.uncertified td{color:var(--warn)}table.layers tr.hl td{background:#fef3c7}td.loc{color:var(--dim)}
input.filter{padding:4px 8px;border:1px solid #d1d5db;border-radius:4px;min-width:260px}
details.group{margin:6px 0}details.group>summary{cursor:pointer;font-weight:600;padding:4px 0}
.finding{border-left:4px solid var(--info);background:#f9fafb;margin:6px 0 6px 8px;padding:6px 10px;border-radius:0 6px 6px 0}
.finding.error{border-color:var(--err)}.finding.warning{border-color:var(--warn)}
.finding .sev{font-size:11px;text-transform:uppercase;font-weight:700}.finding.error .sev{color:var(--err)}.finding.warning .sev{color:var(--warn)}.finding.info .sev{color:var(--info)}
.finding .loc{font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:12px;color:var(--dim)}.finding .fix{font-size:13px;color:#374151}
pre.src{margin:4px 0 0;padding:4px 8px;background:#111827;color:#e5e7eb;border-radius:4px;font-size:12px;overflow:auto}
pre.src .ln{color:#6b7280;margin-right:12px}
.charts{display:flex;flex-wrap:wrap;gap:14px}figure.chart{margin:0;border:1px solid var(--line);border-radius:6px;padding:6px}
figure.chart figcaption{font-weight:600;font-size:13px}.chart-svg .grid{stroke:#eef0f3}.chart-svg .tick,.chart-svg .axis{font-size:11px;fill:#6b7280}
.chart-svg .series{fill:none;stroke-width:2}figure.chart ul.keys{list-style:none;margin:2px 0;padding:0;font-size:12px;max-width:420px}
figure.chart li.drift{color:var(--warn)}
"""

JS = r"""
(function(){
  var status = document.getElementById('modnorm-selfcheck');
  var failures = [];
  function fail(message){ failures.push(message); }
  window.addEventListener('error', function(event){
    status.setAttribute('data-status', 'error');
    status.textContent = 'self-check: script error: ' + event.message;
  });
  function cellValue(row, index, numeric){
    var cell = row.children[index];
    var raw = cell.getAttribute('data-v');
    if (raw === null) raw = cell.textContent;
    return numeric ? parseFloat(raw) : raw.toLowerCase();
  }
  function sortTable(table, index){
    var header = table.tHead.rows[0].children[index];
    var numeric = header.getAttribute('data-type') === 'num';
    var ascending = header.getAttribute('aria-sort') !== 'ascending';
    Array.prototype.forEach.call(table.tHead.rows[0].children, function(th){ th.removeAttribute('aria-sort'); });
    header.setAttribute('aria-sort', ascending ? 'ascending' : 'descending');
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function(a, b){
      var x = cellValue(a, index, numeric), y = cellValue(b, index, numeric);
      var order = x < y ? -1 : (x > y ? 1 : 0);
      return ascending ? order : -order;
    });
    rows.forEach(function(row){ body.appendChild(row); });
  }
  function applyFilter(section){
    var text = section.querySelector('input.filter').value.toLowerCase();
    var role = section.querySelector('select.role-filter').value;
    var shown = 0, rows = section.querySelectorAll('table.layers tbody tr');
    rows.forEach(function(row){
      var visible = (!role || row.getAttribute('data-role') === role) &&
                    (!text || row.textContent.toLowerCase().indexOf(text) >= 0);
      row.style.display = visible ? '' : 'none';
      if (visible) shown += 1;
    });
    section.querySelector('.count').textContent = shown + ' of ' + rows.length + ' layers';
    return shown;
  }
  function colourBy(section, key){
    section.querySelectorAll('rect.atom').forEach(function(rect){
      rect.setAttribute('fill', rect.getAttribute('data-c-' + key));
    });
    section.querySelectorAll('.legend').forEach(function(legend){
      legend.hidden = legend.getAttribute('data-key') !== key;
    });
  }
  document.querySelectorAll('section.model').forEach(function(section){
    var table = section.querySelector('table.layers');
    Array.prototype.forEach.call(table.tHead.rows[0].children, function(th, index){
      th.addEventListener('click', function(){ sortTable(table, index); });
      th.addEventListener('keydown', function(e){ if (e.key === 'Enter') sortTable(table, index); });
    });
    section.querySelector('input.filter').addEventListener('input', function(){ applyFilter(section); });
    section.querySelector('select.role-filter').addEventListener('change', function(){ applyFilter(section); });
    var select = section.querySelector('select.colour-by');
    if (select) select.addEventListener('change', function(){ colourBy(section, select.value); });
    section.querySelectorAll('rect.atom').forEach(function(rect){
      rect.addEventListener('click', function(){
        section.querySelectorAll('.hl').forEach(function(el){ el.classList.remove('hl'); });
        rect.classList.add('hl');
        var row = table.querySelector('tr[data-layer="' + rect.getAttribute('data-layer').replace(/"/g, '\\"') + '"]');
        if (row){ row.classList.add('hl'); row.scrollIntoView({block: 'center'}); }
      });
    });
    applyFilter(section);
  });
  // Self-check: what was drawn is what the analysis holds, and the controls work (then restore the page).
  document.querySelectorAll('section.model').forEach(function(section, n){
    var svg = section.querySelector('svg.graph-svg');
    if (svg){
      var drawn = svg.querySelectorAll('.node').length, expected = +svg.getAttribute('data-expected-nodes');
      if (drawn !== expected) fail('model ' + n + ': ' + drawn + ' nodes drawn, ' + expected + ' expected');
      var box = svg.getBoundingClientRect();
      if (!(box.width > 0 && box.height > 0)) fail('model ' + n + ': the graph has no size');
      svg.querySelectorAll('rect.atom').forEach(function(rect){
        if (!/^#[0-9a-f]{6}$/.test(rect.getAttribute('fill'))) fail('model ' + n + ': an atom has no colour');
      });
    }
    var table = section.querySelector('table.layers');
    var rows = table.tBodies[0].rows.length, expectedRows = +table.getAttribute('data-expected-rows');
    if (rows !== expectedRows) fail('model ' + n + ': ' + rows + ' table rows, ' + expectedRows + ' expected');
    var numeric = Array.prototype.findIndex.call(table.tHead.rows[0].children,
                                                  function(th){ return th.getAttribute('data-type') === 'num'; });
    if (rows > 1 && numeric >= 0){
      var original = Array.prototype.slice.call(table.tBodies[0].rows);
      sortTable(table, numeric);
      var values = Array.prototype.map.call(table.tBodies[0].rows, function(r){ return cellValue(r, numeric, true); });
      for (var i = 1; i < values.length; i++) if (values[i - 1] > values[i]) { fail('model ' + n + ': sort failed'); break; }
      table.tHead.rows[0].children[numeric].removeAttribute('aria-sort');
      original.forEach(function(row){ table.tBodies[0].appendChild(row); });
    }
    var filter = section.querySelector('input.filter');
    filter.value = '\u0000no layer is called this';
    if (applyFilter(section) !== 0) fail('model ' + n + ': filter failed');
    filter.value = '';
    if (applyFilter(section) !== rows) fail('model ' + n + ': clearing the filter failed');
  });
  if (status.getAttribute('data-status') === 'pending'){
    status.setAttribute('data-status', failures.length ? 'failed' : 'ok');
    status.textContent = failures.length ? 'self-check failed: ' + failures.join('; ')
                                         : 'self-check: ok (' + document.querySelectorAll('section.model').length + ' model(s))';
  }
})();
"""
