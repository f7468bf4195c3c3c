// Keyboard shortcuts, the "?" overlay, blur reveal and image explanations for the review pages
// (no inline script: CSP).
"use strict";

(function () {
  function rows() { return Array.from(document.querySelectorAll("#queue tr.row")); }
  var current = 0;
  var pendingG = 0; // time of a "g" waiting for its second key

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
        if (box) box.checked = ids.indexOf(box.value) >= 0;
      });
    }
    var field = form.querySelector("input[name=labels]");
    if (field) field.value = labels || field.value;
    var v = document.createElement("input");
    v.type = "hidden"; v.name = "verdict"; v.value = verdict;
    form.appendChild(v);
    form.submit();
  }

  // The "?" overlay: a <dialog> (focus stays inside while open; Esc closes it natively).
  function overlay() { return document.getElementById("shortcuts"); }
  function toggleOverlay() {
    var d = overlay();
    if (!d || typeof d.showModal !== "function") return;
    if (d.open) d.close(); else d.showModal();
  }

  function reveal(img) {
    img.classList.toggle("revealed");
    img.setAttribute("aria-pressed", String(img.classList.contains("revealed")));
  }

  // Why an image cannot be shown: the server answers its 404 with a sentence for people.
  function explain(img) {
    if (img.dataset.explained) return;
    img.dataset.explained = "1";
    img.classList.add("broken");
    if (!img.classList.contains("full")) { img.title = "image unavailable"; return; }
    var note = document.createElement("p");
    note.className = "unavailable";
    note.setAttribute("role", "status");
    note.textContent = "The image cannot be shown.";
    img.insertAdjacentElement("afterend", note);
    img.hidden = true;
    fetch(img.currentSrc || img.src, { headers: { Accept: "application/json" }, credentials: "same-origin" })
      .then(function (r) { return r.ok ? null : r.json(); })
      .then(function (body) {
        if (body && typeof body.detail === "string") note.textContent = "The image cannot be shown: " + body.detail + ".";
      })
      .catch(function () { /* the sentence above stays */ });
  }

  function typing(t) {
    var tag = (t && t.tagName) || "";
    return tag === "INPUT" || tag === "SELECT" || tag === "TEXTAREA" || (t && t.isContentEditable);
  }

  document.addEventListener("keydown", function (e) {
    if (e.ctrlKey || e.metaKey || e.altKey || typing(e.target)) return;
    var d = overlay();
    if (e.key === "?") { toggleOverlay(); e.preventDefault(); return; }
    if (d && d.open) return; // the dialog's own keys (Tab, Esc, its button)
    var t = e.target;
    if ((e.key === "Enter" || e.key === " ") && t && t.classList && t.classList.contains("blurred")) {
      reveal(t); e.preventDefault(); return;
    }
    if (pendingG && Date.now() - pendingG < 1500) {
      pendingG = 0;
      var go = { q: "/queue", d: "/dashboard", s: "/search" }[e.key];
      if (go) { window.location = go; e.preventDefault(); }
      return;
    }
    // Enter on a focused link or button does what that control does, not "open the current row".
    var onControl = t && t !== document.body && t.closest && t.closest("a, button, summary, [tabindex]:not([tabindex=\"-1\"])");
    var all = rows();
    switch (e.key) {
      case "g": pendingG = Date.now(); break;
      case "j": select(current + 1); break;
      case "k": select(current - 1); break;
      case "x":
        if (all.length) {
          var b = all[current].querySelector("input[name=item_ids]");
          if (b) b.checked = !b.checked;
        }
        break;
      case "Enter":
        if (onControl || !all.length) return;
        window.location = all[current].dataset.href;
        break;
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
      reveal(t);
      e.preventDefault();
    }
    if (t && t.id === "shortcuts-open") toggleOverlay();
  });

  // An image that failed: error events do not bubble, so listen in the capture phase.
  document.addEventListener("error", function (e) {
    var t = e.target;
    if (t && t.tagName === "IMG") explain(t);
  }, true);

  document.addEventListener("DOMContentLoaded", function () {
    select(0);
    rows().forEach(function (r, j) { r.addEventListener("click", function () { select(j); }); });
    // Blurred images are controls: reachable with Tab, revealed with Enter or Space.
    document.querySelectorAll("img.blurred").forEach(function (img) {
      if (!img.hasAttribute("tabindex")) img.tabIndex = 0;
      img.setAttribute("role", "button");
      img.setAttribute("aria-pressed", "false");
    });
    // Images that failed before this script ran.
    document.querySelectorAll("img").forEach(function (img) {
      if (img.complete && img.naturalWidth === 0 && img.getAttribute("src")) explain(img);
    });
  });

})();
