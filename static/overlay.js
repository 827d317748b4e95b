// Clicking a label shows its mask as an overlay rendered by the server at the user's threshold.
document.querySelectorAll("[data-overlay-viewer]").forEach((viewer) => {
  const overlay = viewer.querySelector("img.overlay");
  const buttons = document.querySelectorAll(`[data-overlay-for="${viewer.id}"]`);
  buttons.forEach((button) => button.addEventListener("click", () => {
    const url = button.dataset.overlayUrl;
    const on = !url || button.getAttribute("aria-pressed") === "true";
    buttons.forEach((b) => b.setAttribute("aria-pressed", "false"));
    if (on) { overlay.hidden = true; overlay.removeAttribute("src"); return; }
    button.setAttribute("aria-pressed", "true");
    overlay.src = url; overlay.hidden = false;
  }));
});
// Drag and drop onto the upload box.
document.querySelectorAll(".drop").forEach((zone) => {
  const input = zone.querySelector("input[type=file]");
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault(); zone.classList.remove("over");
    input.files = e.dataTransfer.files; zone.closest("form").submit();
  });
});
// A pending image's page refreshes itself until processing is done.
const pending = document.querySelector("[data-poll-url]");
if (pending) {
  const poll = async () => {
    const body = await (await fetch(pending.dataset.pollUrl, {credentials: "same-origin"})).json();
    if (body.status !== "pending" && body.masks_status !== "pending") { location.reload(); return; }
    setTimeout(poll, 2000);
  };
  setTimeout(poll, 2000);
}
