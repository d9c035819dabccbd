// The SAE page's map: switch what colours the points (density or label score). The map
// itself is SVG rendered by the server (api/map_chart.py); this only swaps one class.
(() => {
  const map = document.getElementById("feature-map");
  const choice = document.getElementById("map-colour");
  if (!map || !choice) return;
  choice.closest("label").hidden = false;
  choice.addEventListener("change", () => {
    const by = choice.value === "score" ? "by-score" : "by-density";
    map.classList.remove("by-density", "by-score");
    map.classList.add(by);
    for (const el of document.querySelectorAll(".legend-density, .legend-score")) {
      el.hidden = !el.classList.contains(by === "by-score" ? "legend-score" : "legend-density");
    }
  });
})();
