// Search in a static report: filters the index written beside this page (search-index.js).
(function () {
  var index = window.REGISTRY_INDEX || {variants: [], versions: [], checkpoints: []};
  var form = document.getElementById("search-form"), input = document.getElementById("q"), out = document.getElementById("results");
  function item(href, text) { var li = document.createElement("li"), a = document.createElement("a"); a.href = href; a.textContent = text; li.appendChild(a); return li; }
  function section(title, items) {
    var h = document.createElement("h2"); h.textContent = title; out.appendChild(h);
    var ul = document.createElement("ul"); items.slice(0, 100).forEach(function (li) { ul.appendChild(li); });
    if (!items.length) { var none = document.createElement("li"); none.textContent = "none"; ul.appendChild(none); }
    out.appendChild(ul);
  }
  function run() {
    var q = input.value.trim(), fp = q.indexOf("sha256:") === 0 ? q : "sha256:" + q;
    out.textContent = ""; if (!q) return;
    section("Variants", index.variants.filter(function (v) { return v[1].indexOf(q) >= 0; }).map(function (v) { return item("variant-" + v[0] + ".html", v[1]); }));
    section("Schema versions", index.versions.filter(function (s) { return q.length >= 4 && s[2].indexOf(fp) === 0; }).map(function (s) { return item("variant-" + s[0] + ".html", s[1] + " " + s[2].slice(7, 19)); }));
    section("Checkpoints", index.checkpoints.filter(function (c) { return c[1].indexOf(q) >= 0 || (q.length >= 4 && c[2].indexOf(fp) === 0); }).map(function (c) { return item("checkpoint-" + c[0] + ".html", c[1]); }));
  }
  form.addEventListener("submit", function (e) { e.preventDefault(); history.replaceState(null, "", "?q=" + encodeURIComponent(input.value)); run(); });
  var m = /[?&]q=([^&]*)/.exec(location.search); if (m) { input.value = decodeURIComponent(m[1].replace(/\+/g, " ")); run(); }
})();
