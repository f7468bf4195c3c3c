// Review work (issue 18): hold the open item's content (lease, renewed while the page is open),
// mark queue rows other reviewers hold, u = undo the last decision, n = next free item.
"use strict";

(function () {
  function csrf() {
    var m = document.querySelector("meta[name=csrf-token]");
    return m ? m.content : "";
  }

  function call(method, url) {
    return fetch(url, {
      method: method,
      credentials: "same-origin",
      keepalive: method === "DELETE",
      headers: { "X-CSRF-Token": csrf(), Accept: "application/json" },
    });
  }

  function clock(iso) {
    var d = new Date(iso);
    return isNaN(d) ? iso : d.toLocaleTimeString();
  }

  function holdItem(work) {
    var id = work.dataset.item;
    var status = document.getElementById("lease");
    var every = Math.max(5, Number(work.dataset.leaseS || 300) / 3) * 1000;
    var mine = false;
    function take() {
      call("POST", "/api/items/" + id + "/lease").then(function (r) {
        return r.json().then(function (body) {
          if (r.ok) {
            mine = true;
            status.className = "lease mine";
            status.textContent = "You hold this content until " + clock(body.expires_at) + " (renewed while this page is open).";
          } else if (r.status === 409) {
            mine = false;
            status.className = "lease taken";
            status.textContent = body.detail;
          }
          document.body.classList.toggle("content-taken", !mine && r.status === 409);
        });
      }).catch(function () { /* offline: the lease lapses by itself */ });
    }
    take();
    setInterval(take, every);
    window.addEventListener("pagehide", function () {
      if (mine) call("DELETE", "/api/items/" + id + "/lease");
    });
  }

  function markQueue() {
    var rows = Array.from(document.querySelectorAll("#queue tr.row[data-item]"));
    if (!rows.length) return;
    var query = rows.map(function (r) { return "item_id=" + encodeURIComponent(r.dataset.item); }).join("&");
    fetch("/api/leases?" + query, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { return r.ok ? r.json() : []; })
      .then(function (held) {
        held.forEach(function (lease) {
          if (lease.mine) return;
          rows.forEach(function (row) {
            if (row.dataset.item !== String(lease.item_id) || row.classList.contains("taken")) return;
            row.classList.add("taken");
            var tag = document.createElement("span");
            tag.className = "taken-by";
            tag.textContent = "taken by " + lease.holder;
            (row.querySelector("td.uri") || row.lastElementChild).appendChild(tag);
          });
        });
      })
      .catch(function () {});
  }

  document.addEventListener("keydown", function (e) {
    var tag = (e.target && e.target.tagName) || "";
    if (e.ctrlKey || e.metaKey || e.altKey || tag === "INPUT" || tag === "SELECT" || tag === "TEXTAREA") return;
    if (document.querySelector("dialog[open]")) return; // the "?" overlay has the keys
    var target = null;
    if (e.key === "u") target = document.getElementById("undo-button");
    if (e.key === "n") target = document.querySelector("#next-free button");
    if (!target) return;
    e.preventDefault();
    target.click();
  });

  document.addEventListener("DOMContentLoaded", function () {
    var work = document.getElementById("work");
    if (work && work.dataset.item) holdItem(work);
    else markQueue();
  });
})();
