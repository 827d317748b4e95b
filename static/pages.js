// The pages' only script: mask overlays, drag and drop, and polling while an image is processed.

// A label button lays its server-rendered overlay over the image; pressing it again, or
// "Remove overlay", takes it away.
document.querySelectorAll("[data-overlay-viewer]").forEach((viewer) => {
  const overlay = viewer.querySelector("img.overlay");
  const buttons = document.querySelectorAll(`[data-overlay-for="${viewer.id}"]`);
  const clear = document.querySelector(`[data-overlay-for="${viewer.id}"][data-overlay-clear]`);
  const show = (button) => {
    buttons.forEach((b) => { if (b.hasAttribute("aria-pressed")) b.setAttribute("aria-pressed", "false"); });
    if (!button) {
      overlay.hidden = true; overlay.removeAttribute("src"); viewer.removeAttribute("data-overlay");
      if (clear) clear.disabled = true;
      return;
    }
    button.setAttribute("aria-pressed", "true");
    viewer.dataset.overlay = "loading";
    overlay.onload = () => { viewer.dataset.overlay = button.textContent.trim(); };
    overlay.src = button.dataset.overlayUrl; overlay.hidden = false;
    if (clear) clear.disabled = false;
  };
  buttons.forEach((button) => button.addEventListener("click", () => {
    const on = button.getAttribute("aria-pressed") === "true";
    show(button.dataset.overlayUrl && !on ? button : null);
  }));
});

// Dropping a file on the upload card loads it.
document.querySelectorAll("form.drop").forEach((zone) => {
  const input = zone.querySelector("input[type=file]");
  ["dragenter", "dragover"].forEach((name) => zone.addEventListener(name, (e) => {
    e.preventDefault(); zone.classList.add("over");
  }));
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault(); zone.classList.remove("over");
    if (!e.dataTransfer.files.length) return;
    input.files = e.dataTransfer.files;
    zone.submit();
  });
  input.addEventListener("change", () => { if (input.files.length) zone.classList.add("chosen"); });
});

// An image being processed (or an upload's labels being found): ask until it is done, then reload the page.
const pending = document.querySelector("[data-poll-url]");
if (pending) {
  let delay = 1500;
  const poll = async () => {
    try {
      const response = await fetch(pending.dataset.pollUrl, {credentials: "same-origin", headers: {Accept: "application/json"}});
      if (response.status === 404) { location.reload(); return; }  // gone: the page says why
      if (response.ok) {
        const body = await response.json();
        if ("state" in body) { if (body.state !== "working") { location.reload(); return; } }  // an upload's labels
        else if (body.status !== "pending" && body.masks_status !== "pending") { location.reload(); return; }
        const embed = pending.querySelector("[data-status]");
        if (embed && body.status !== embed.dataset.status) { location.reload(); return; }
      }
    } catch (error) { /* the server is restarting: keep asking */ }
    delay = Math.min(delay * 1.3, 10000);
    setTimeout(poll, delay);
  };
  setTimeout(poll, delay);
}
