// Keyboard shortcuts and blur reveal for the review pages (no inline script: CSP).
"use strict";

(function () {
  function rows() { return Array.from(document.querySelectorAll("#queue tr.row")); }
  var current = 0;

  function select(i) {
    var all = rows();
    if (!all.length) return;
    current = Math.max(0, Math.min(i, all.length - 1));
    all.forEach(function (r, j) { r.classList.toggle("current", j === current); });
    all[current].scrollIntoView({ block: "nearest" });
  }

  function chosenIds() {
    var checked = Array.from(document.querySelectorAll("#queue input[name=item_ids]:checked"));
    if (checked.length) return checked.map(function (c) { return c.value; });
    var all = rows();
    return all.length ? [all[current].dataset.item] : [];
  }

  // Submit the decision form for the checked items, or else the current one.
  function decide(verdict) {
    var form = document.getElementById("decide");
    if (!form) return;
    var labels = "";
    if (verdict === "relabel") {
      labels = window.prompt("Labels (policy/class, comma-separated):", "");
      if (!labels) return;
    }
    if (!form.dataset.single) {
      var ids = chosenIds();
      if (!ids.length) return;
      rows().forEach(function (r) {
        var box = r.querySelector("input[name=item_ids]");
        box.checked = ids.indexOf(box.value) >= 0;
      });
    }
    form.querySelector("input[name=labels]").value = labels || form.querySelector("input[name=labels]").value;
    var v = document.createElement("input");
    v.type = "hidden"; v.name = "verdict"; v.value = verdict;
    form.appendChild(v);
    form.submit();
  }

  document.addEventListener("keydown", function (e) {
    var tag = (e.target && e.target.tagName) || "";
    if (e.ctrlKey || e.metaKey || e.altKey || tag === "INPUT" || tag === "SELECT" || tag === "TEXTAREA") return;
    var all = rows();
    switch (e.key) {
      case "j": select(current + 1); break;
      case "k": select(current - 1); break;
      case "x":
        if (all.length) { var b = all[current].querySelector("input[name=item_ids]"); b.checked = !b.checked; }
        break;
      case "Enter": if (all.length) window.location = all[current].dataset.href; break;
      case "c": decide("confirm"); break;
      case "d": decide("dismiss"); break;
      case "l": decide("relabel"); break;
      default: return;
    }
    e.preventDefault();
  });

  document.addEventListener("click", function (e) {
    var t = e.target;
    if (t && t.classList && t.classList.contains("blurred")) {
      t.classList.toggle("revealed");
      e.preventDefault();
    }
  });

  document.addEventListener("DOMContentLoaded", function () {
    select(0);
    rows().forEach(function (r, j) { r.addEventListener("click", function () { select(j); }); });
  });
})();
