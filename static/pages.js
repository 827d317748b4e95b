// The pages' script (no page has an inline one: the Content-Security-Policy runs none): mask overlays,
// uploads with progress (chosen or dropped), preference sliders, and polling while an image is processed.
// Wrapped in a block: an upload's answer may be written into this same window (document.write below),
// which runs this script again, and top-level names would then clash.
{

// Where the focus goes on the next page, when this one reloads or moves on by itself (an image processed, an
// upload loaded): a place named by id, and what to say there, kept in the tab's sessionStorage for that page.
const NEXT_FOCUS = "imaginaition.next-focus";
const focusNext = (url, id, say) => {
  try { sessionStorage.setItem(NEXT_FOCUS, JSON.stringify({url, id, say, at: Date.now()})); } catch (e) { /* off */ }
};
let placed = null;  // the element this script gave the focus to on load (not a place the user chose)
{
  let next = null;
  try { next = JSON.parse(sessionStorage.getItem(NEXT_FOCUS)); sessionStorage.removeItem(NEXT_FOCUS); }
  catch (e) { /* storage off, or not JSON */ }
  if (next && next.url === location.pathname + location.search && Date.now() - next.at < 60000) {
    const target = next.id && document.getElementById(next.id);
    if (target && [document.body, null].includes(document.activeElement)) {
      if (!target.matches("a[href], button, input, select, textarea, [tabindex]")) target.tabIndex = -1;
      target.focus();
      placed = target;
    }
    if (next.say) {  // a live region first, its words a moment later: one filled as the page loads is not said
      const said = document.createElement("p");
      said.setAttribute("role", "status"); said.className = "hint";
      if (target) target.after(said); else document.querySelector("main")?.prepend(said);
      setTimeout(() => { said.textContent = next.say; }, 250);
    }
  }
}

// The last action's messages ("Preferences saved.") are in the page as it loads, where a live region is not
// announced: said again, a moment later, in a live region of their own (the list stays as it is to see).
document.querySelectorAll("ul.messages").forEach((list) => {
  const said = document.createElement("p");
  said.setAttribute("role", "status"); said.className = "visually-hidden"; said.dataset.messagesSaid = "";
  list.removeAttribute("role");  // one region says them, once
  list.after(said);
  setTimeout(() => { said.textContent = list.innerText; }, 250);
});

// A button that cannot act yet is aria-disabled rather than disabled, so that Tab reaches it and its
// description (why not yet) is read: it sends nothing.
document.addEventListener("submit", (e) => {
  if (e.submitter?.getAttribute("aria-disabled") === "true") e.preventDefault();
});

// A label button lays its server-rendered overlay over the image; pressing it again, or
// "Remove overlay", takes it away.
document.querySelectorAll("[data-overlay-viewer]").forEach((viewer) => {
  const overlay = viewer.querySelector("img.overlay");
  const buttons = document.querySelectorAll(`[data-overlay-for="${viewer.id}"]`);
  const labels = [...buttons].filter((b) => b.hasAttribute("aria-pressed"));
  const clear = document.querySelector(`[data-overlay-for="${viewer.id}"][data-overlay-clear]`);
  const message = document.querySelector(`[data-overlay-message="${viewer.id}"]`);
  const sayNow = (text) => { if (message) message.textContent = text; };
  const show = (button) => {
    const pressed = labels.find((b) => b.getAttribute("aria-pressed") === "true");
    labels.forEach((b) => b.setAttribute("aria-pressed", "false"));
    if (!button) {
      overlay.onload = overlay.onerror = null;
      overlay.hidden = true; overlay.removeAttribute("src"); viewer.removeAttribute("data-overlay");
      // A disabled button drops the focus to the page's body: hand it to the label just taken away (or the first).
      if (clear && document.activeElement === clear) (pressed || labels[0])?.focus();
      if (clear) clear.disabled = true;
      return;
    }
    sayNow("");
    button.setAttribute("aria-pressed", "true");
    viewer.dataset.overlay = "loading";
    overlay.onload = () => { viewer.dataset.overlay = button.textContent.trim(); };
    overlay.onerror = async () => {
      show(null);
      await overlayFailed(button);  // asks the server why first
      if (!viewer.dataset.overlay) viewer.dataset.overlay = "failed";  // unless another label was pressed meanwhile
    };
    overlay.src = button.dataset.overlayUrl; overlay.hidden = false;
    if (clear) clear.disabled = false;
  };
  // The overlay's URL answers 404 once its image is deleted, or, for an upload, once another tab has
  // replaced it or it expired: the upload's state URL says which, in the server's words. A question that
  // gets no answer at all means the server cannot be reached (the network is down), which is said instead.
  const overlayFailed = async (button) => {
    const name = button.firstChild.textContent.trim();
    const say = (text) => { if (!viewer.dataset.overlay) sayNow(text); };  // not over a label pressed meanwhile
    const unreachable = () => say(`The mask of ${name} could not be loaded: the server could not be reached. `
      + `Check the connection, then press ${name} again.`);
    if (!viewer.dataset.stateUrl) {
      let response;
      try { response = await fetch(button.dataset.overlayUrl, {credentials: "same-origin", cache: "no-store"}); }
      catch (error) { unreachable(); return; }
      if (response.ok) { say(`The mask of ${name} could not be loaded. Press ${name} again.`); return; }
      say(`The mask of ${name} could not be loaded: the image may have been deleted or processed again. `
          + "Reload the page to see what it has now.");
      return;
    }
    let reason = "The picture may have expired or been replaced in another tab or window.";
    let response;
    try {
      response = await fetch(viewer.dataset.stateUrl,
                             {credentials: "same-origin", headers: {Accept: "application/json"}});
    } catch (error) { unreachable(); return; }
    try {
      const body = await response.json();
      if (response.status === 404 && body.error) reason = body.error;
    } catch (error) { /* not JSON (a proxy's page): keep the general reason */ }
    say(`The mask of ${name} could not be loaded. ${reason} Load your picture again to see its masks.`);
  };
  buttons.forEach((button) => button.addEventListener("click", () => {
    const on = button.getAttribute("aria-pressed") === "true";
    show(button.dataset.overlayUrl && !on ? button : null);
  }));
});

// The upload form is sent by a request of its own, so that the page can show how much has gone and the
// form cannot be sent twice. The server's answer is followed as the browser would have: a redirect is
// gone to; a page (the form with its errors, a refusal) replaces this one.
document.querySelectorAll("form.drop").forEach((zone) => {
  const input = zone.querySelector("input[type=file]");
  const button = zone.querySelector("button[type=submit]");
  const status = zone.querySelector("[data-upload-status]");
  // An upload whose answer never comes would keep Load disabled for ever: Cancel gives the form back.
  const cancel = document.createElement("button");
  cancel.type = "button"; cancel.className = "secondary"; cancel.textContent = "Cancel"; cancel.hidden = true;
  if (status) status.after(cancel);  // next after the focused progress, in the keyboard's order
  let inFlight = null;
  cancel.addEventListener("click", () => inFlight?.abort());
  const ready = () => {  // for another try; the focus, if on the progress or on Cancel (hidden now), to Load
    inFlight = null;
    button.disabled = false;
    if (status.contains(document.activeElement) || document.activeElement === cancel) button.focus();
    cancel.hidden = true;
  };
  const send = () => {
    if (!window.FormData || !status) { zone.submit(); return; }
    // A file over the server's limit is refused here, before minutes of sending it only to hear so.
    const chosen = input.files[0], limit = Number(zone.dataset.maxBytes);
    if (chosen && limit && chosen.size > limit) {
      status.replaceChildren(`${chosen.name} is ${chosen.size.toLocaleString("en")} bytes; the limit is `
        + `${limit.toLocaleString("en")} bytes. Choose a smaller file (or shrink this one).`);
      status.classList.add("error");
      input.setAttribute("aria-invalid", "true");
      input.focus();
      return;
    }
    input.removeAttribute("aria-invalid");
    // A marker in the address: the server redirects to the page the form is on, and only an address
    // that differs from the one sent to tells a redirect (the upload worked) from the form answered again.
    const url = new URL(zone.action);
    url.hash = "";
    url.searchParams.set("sent", "script");
    const xhr = new XMLHttpRequest();
    const bar = document.createElement("progress");
    const text = document.createElement("span");
    bar.max = 100; bar.value = 0;
    bar.setAttribute("aria-label", "Uploading the picture");
    status.replaceChildren(bar, " ", text);
    // As in "Add images": Load is disabled while it works, which would drop the focus on it to the page's
    // start; the focus goes to the progress, which says what happens.
    status.tabIndex = -1;
    if (zone.contains(document.activeElement)) status.focus();
    const file = input.files[0];
    let said = -1;
    const progress = (percent) => {
      bar.value = percent;
      const step = Math.floor(percent / 10) * 10;  // a polite live region: say every tenth, not every byte
      if (step !== said) { said = step; text.textContent = `Uploading ${file ? file.name : "the file"}: ${step}%`; }
    };
    progress(0);
    xhr.upload.addEventListener("progress", (e) => { if (e.lengthComputable) progress(100 * e.loaded / e.total); });
    xhr.upload.addEventListener("load", () => {
      bar.removeAttribute("value");  // indeterminate: the server reads the picture and finds its labels
      text.textContent = "Uploaded; reading the picture…";
    });
    xhr.addEventListener("load", () => {
      inFlight = null; cancel.hidden = true;
      if (xhr.responseURL && xhr.responseURL !== url.href) {
        // The page it leads to shows the upload below the fold: the focus starts there, not at the page's top.
        const next = new URL(xhr.responseURL);
        if (zone.dataset.focusAfter) focusNext(next.pathname + next.search, zone.dataset.focusAfter, "");
        location.assign(xhr.responseURL);
        return;
      }
      document.open(); document.write(xhr.responseText); document.close();
    });
    // No answer at all: the connection broke, or a server in front refused the body and closed it.
    xhr.addEventListener("error", () => {
      status.replaceChildren("The upload did not reach the server (the connection was lost, or the file is "
        + "larger than the server takes). Try again, or choose a smaller file.");
      status.classList.add("error");
      ready();
    });
    xhr.addEventListener("abort", () => {
      status.replaceChildren(`Upload cancelled: ${file ? file.name : "the file"} was not loaded.`);
      ready();
    });
    status.classList.remove("error");
    button.disabled = true;
    inFlight = xhr; cancel.hidden = false;
    xhr.open("POST", url.href);
    xhr.send(new FormData(zone));
  };
  zone.addEventListener("submit", (e) => { e.preventDefault(); if (!button.disabled) send(); });
  // Back to this page from the next one: a page kept in the browser's cache still shows the last upload.
  window.addEventListener("pageshow", (e) => {
    if (e.persisted && status) { status.replaceChildren(); button.disabled = false; cancel.hidden = true; }
  });

  // Dropping a file on the upload card loads it, as choosing it and pressing Load does.
  ["dragenter", "dragover"].forEach((name) => zone.addEventListener(name, (e) => {
    e.preventDefault(); zone.classList.add("over");
  }));
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault(); zone.classList.remove("over");
    if (!e.dataTransfer.files.length || button.disabled) return;
    if (e.dataTransfer.files.length > 1) {  // this card searches by one picture; the gallery adds many
      status.replaceChildren(`${e.dataTransfer.files.length} files were dropped; this card takes one picture to `
        + "search with. To add several to the database, use Add images on the Gallery page.");
      status.classList.add("error");
      return;
    }
    input.files = e.dataTransfer.files;
    zone.classList.add("chosen");
    send();
  });
  input.addEventListener("change", () => { if (input.files.length) zone.classList.add("chosen"); });
});

// "Add images" (gallery): the files go one per request, in turn, each answered in JSON, so a list says what
// became of each as it happens and no request carries more than one file (the server's limit is per request).
document.querySelectorAll("form[data-add-images]").forEach((form) => {
  const input = form.querySelector("input[type=file]");
  const button = form.querySelector("button[type=submit]");
  const status = form.querySelector("[data-add-progress]");
  const list = form.querySelector("[data-add-results]");
  // The cookie's token, as it is now: signing in again (in another tab) replaces the one this page was given.
  const token = () => (document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/) || [])[1]
    || form.querySelector("input[name=csrfmiddlewaretoken]").value;
  const limit = Number(form.dataset.maxBytes);
  // Leaving while files are sent would drop those not yet sent without a word: the browser asks first.
  let adding = false;
  window.addEventListener("beforeunload", (e) => { if (adding) { e.preventDefault(); e.returnValue = ""; } });
  const said = {added: "added; it is being processed.", exists: "already in the gallery."};
  // No answer is not a refusal: the server may have stored it. Sending it again is safe, as the same bytes
  // are recognised, so the files that got no answer are offered again on their own.
  const maybeAdded = "it may not have been added; adding it again is safe — a copy already there is recognised.";
  const noAnswer = `no answer from the server (connection lost): ${maybeAdded}`;
  const cancelled = `cancelled before the server answered: ${maybeAdded}`;
  const unavailable = "the service is unavailable just now (503: its database or storage is out of reach): it was "
    + "not added; try it again in a moment.";
  const serverFailed = (code) => `the service failed on it (${code}): ${maybeAdded}`;
  const retry = document.createElement("button");
  retry.type = "button"; retry.className = "secondary"; retry.hidden = true;
  let sendAgain = [];
  retry.addEventListener("click", () => { if (!button.disabled) addAll(sendAgain); });
  // A file whose answer never comes would keep the form waiting for ever: Cancel stops after it.
  const cancel = document.createElement("button");
  cancel.type = "button"; cancel.className = "secondary"; cancel.textContent = "Cancel adding"; cancel.hidden = true;
  let stop = null;  // the AbortController of the files being added
  cancel.addEventListener("click", () => {
    if (document.activeElement === cancel) status.focus();  // it hides itself; the progress says how it ended
    cancel.hidden = true;
    stop?.abort();
  });
  status.after(cancel, retry);  // next after the focused progress, in the keyboard's order
  const line = (name, text, url, failed) => {
    const item = document.createElement("li");
    if (url) { const link = document.createElement("a"); link.href = url; link.textContent = name; item.append(link); }
    else { item.append(name); }
    item.append(`: ${text}`);
    if (failed) item.classList.add("error");
    list.append(item);
  };
  // XMLHttpRequest, not fetch: only it tells how much of a file has been sent (a 20 MB photo over a phone's
  // network showed an empty bar for a minute). Answers with what sendOne reads of a fetch's response.
  const post = (body, signal, onProgress) => new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", form.action);
    xhr.setRequestHeader("Accept", "application/json");
    xhr.upload.addEventListener("progress", (e) => { if (e.lengthComputable) onProgress(e.loaded / e.total); });
    xhr.addEventListener("load", () => {
      let json = null;
      if ((xhr.getResponseHeader("Content-Type") || "").includes("json")) {
        try { json = JSON.parse(xhr.responseText); } catch { json = null; }
      }
      resolve({ok: xhr.status >= 200 && xhr.status < 300, status: xhr.status, json,
               redirected: Boolean(xhr.responseURL) && xhr.responseURL !== form.action});
    });
    xhr.addEventListener("error", () => reject(new Error("no answer")));
    xhr.addEventListener("abort", () => reject(new Error("cancelled")));
    signal.addEventListener("abort", () => xhr.abort(), {once: true});
    xhr.send(body);
  });
  const sendOne = async (file, signal, onProgress) => {
    if (limit && file.size > limit) {
      return [{name: file.name, state: "refused", message: `it is ${file.size.toLocaleString("en")} bytes; the `
        + `limit is ${limit.toLocaleString("en")} bytes.`}];
    }
    const body = new FormData();
    body.append("csrfmiddlewaretoken", token());
    body.append("files", file);
    try {
      const response = await post(body, signal, onProgress);
      const json = response.json;
      if (response.ok && json && json.results) return json.results;
      // A 5xx is the service's failure, not the file's: said so, and offered again like a lost answer.
      if (response.status === 503) return [{name: file.name, state: "failed", message: unavailable}];
      if (response.status >= 500) return [{name: file.name, state: "failed", message: serverFailed(response.status)}];
      // Signed out (sent to the sign-in page), or the page's sign-in out of date: not the file's fault, and every
      // file after it would meet the same; they are offered again once the user has signed in (in another tab).
      if (response.redirected || response.status === 403) {
        return [{name: file.name, state: "signedout", message: response.redirected
          ? "not added: you are signed out." : "not added: this page's sign-in is out of date (signed out or in "
          + "again elsewhere)."}];
      }
      const why = `the server refused it (${response.status}${response.status === 413 ? ": too large" : ""}).`;
      return [{name: file.name, state: "refused", message: why}];
    } catch (error) {
      if (signal.aborted) return [{name: file.name, state: "unanswered", message: cancelled}];
      return [{name: file.name, state: "unanswered", message: noAnswer}];
    }
  };
  const addAll = async (files) => {
    if (!window.fetch || !window.FormData) { form.submit(); return; }
    // The button is disabled while it works, which would drop the focus on it (a screen reader's place
    // included) to the page's start: the focus goes to the progress, which says what happens.
    const focusWasHere = form.contains(document.activeElement);
    adding = true;
    button.disabled = true;
    retry.hidden = true;
    const controller = new AbortController();
    stop = controller;
    cancel.hidden = false;
    status.tabIndex = -1;
    if (focusWasHere) status.focus();
    list.replaceChildren();
    const bar = document.createElement("progress");
    const text = document.createElement("span");
    bar.max = files.length; bar.value = 0;
    bar.setAttribute("aria-label", "Adding images");
    status.replaceChildren(bar, " ", text);
    const counts = {added: 0, exists: 0, refused: 0, unanswered: 0, failed: 0, unsent: 0};
    sendAgain = [];
    let storageFailed = "";  // once storing failed, every other file would fail alike, each after a timeout
    let signedOut = false;
    for (const [index, file] of files.entries()) {
      // Not sent, and offered again: not the files' fault (storage: with the one that failed).
      const notSent = signedOut ? "not sent: you are signed out."
        : controller.signal.aborted ? "not sent (cancelled)."
        : storageFailed ? `Not tried: storing the file before it failed (${storageFailed})` : "";
      if (notSent) {
        counts.unsent += 1;
        sendAgain.push(file);
        line(file.name, notSent, null, true);
      } else {
        const addingThis = `Adding ${index + 1} of ${files.length}: ${file.name}`;
        text.textContent = addingThis;
        const sent = (fraction) => {  // the bar moves within the file; the words say how much of it went
          bar.value = index + fraction;
          text.textContent = fraction < 1 ? `${addingThis} (${Math.floor(100 * fraction)} % sent)`
            : `${addingThis} (sent; the server is storing it)`;
        };
        for (const result of await sendOne(file, controller.signal, sent)) {
          if (result.state === "signedout") {
            signedOut = true;
            counts.unsent += 1;
            sendAgain.push(file);
            line(result.name, result.message, null, true);
            continue;
          }
          counts[result.state] += 1;
          line(result.name, said[result.state] || result.message, result.url, !said[result.state]);
          if (result.state === "unanswered" || result.state === "failed") sendAgain.push(file);
          if (result.storage_failed) storageFailed = result.message;
        }
      }
      bar.value = index + 1;
    }
    const again = document.createElement("a");
    again.href = location.pathname;
    again.textContent = "Show the gallery";
    const noAnswers = counts.unanswered ? `, ${counts.unanswered} with no answer` : "";
    const failed = counts.failed ? `, ${counts.failed} failed on the server` : "";
    const unsent = counts.unsent ? `, ${counts.unsent} not sent` : "";
    text.textContent = `${controller.signal.aborted ? "Cancelled" : "Done"}: ${counts.added} added, `
      + `${counts.exists} already there, ${counts.refused} refused${noAnswers}${failed}${unsent}. `;
    status.append(again);
    if (signedOut) {  // signing in here would leave the page and the files chosen: in another tab, then try again
      const signIn = document.createElement("a");
      signIn.href = `${form.dataset.loginUrl}?next=${encodeURIComponent(location.pathname)}`;
      signIn.target = "_blank";
      signIn.rel = "noopener";
      signIn.textContent = "Sign in again (in a new tab)";
      status.append(". ", signIn, ", then try them again here.");
    }
    cancel.hidden = true;
    if (sendAgain.length) {
      retry.textContent = sendAgain.length === 1 ? "Try it again" : `Try the ${sendAgain.length} again`;
      retry.hidden = false;
    }
    adding = false;
    button.disabled = false;
    input.value = "";
  };
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    if (!button.disabled && input.files.length) addAll([...input.files]);
  });
  ["dragenter", "dragover"].forEach((name) => form.addEventListener(name, (e) => {
    e.preventDefault(); form.classList.add("over");
  }));
  form.addEventListener("dragleave", () => form.classList.remove("over"));
  form.addEventListener("drop", (e) => {
    e.preventDefault(); form.classList.remove("over");
    if (e.dataTransfer.files.length && !button.disabled) addAll([...e.dataTransfer.files]);
  });
});

// A label filter folds its long list of checkboxes away (one Tab passes it): open when Back restores a checked one.
window.addEventListener("pageshow", () => document.querySelectorAll("details.label-filter").forEach((filter) => {
  if (filter.querySelector("input:checked")) filter.open = true;
}));

// A range slider shows its value beside its label (the preferences page), also when Back restores a moved one.
document.querySelectorAll("input[type=range]").forEach((input) => {
  const out = document.getElementById(input.id + "-value");
  if (!out) return;
  const show = () => { out.textContent = input.value; };
  input.addEventListener("input", show);
  window.addEventListener("pageshow", show);
});

// An image being processed (or an upload's labels being found): ask until it is done, then reload the page.
const pending = document.querySelector("[data-poll-url]");
if (pending) {
  let delay = 1500;
  const signedOut = () => {  // it stopped asking: say so, rather than "updates by itself" for ever
    const note = document.createElement("p");
    note.setAttribute("role", "alert");
    const link = document.createElement("a");
    link.href = pending.dataset.loginUrl + "?next=" + encodeURIComponent(location.pathname + location.search);
    link.textContent = "Sign in again";
    note.append("This page stopped updating: you are signed out. ", link, " to follow it.");
    pending.after(note);
  };
  const notice = document.createElement("p");  // a live region in place before it has anything to say
  notice.setAttribute("role", "status");
  notice.className = "hint";
  pending.after(notice);
  // A reload closes an open <details> (the delete confirmation) and sends the focus back to the page's start.
  // So when the user is somewhere (the focus on a control: a label pressed, a form, a link; or a details
  // open), the page offers the reload instead of doing it. With the focus on the body, or on a place a script
  // gave it (tabindex=-1: after the skip link, an upload, a reload), it reloads. Either way the reloaded page
  // focuses the updated section and says the news in a live region: the very element that had the focus is
  // not restored, as processing changes the controls (label buttons appear, Search similar comes alive).
  const reloadNow = (news) => {
    focusNext(location.pathname + location.search, pending.dataset.pollFocus, news);
    location.reload();
  };
  const update = (news) => {
    const active = document.activeElement;
    const somewhere = active && active !== document.body && active !== placed
      && (active.closest("form") || active.getAttribute("tabindex") !== "-1");
    if (!document.querySelector("details[open]") && !somewhere) { reloadNow(news); return; }
    const reload = document.createElement("button");
    reload.type = "button"; reload.className = "secondary"; reload.textContent = "Reload the page";
    reload.addEventListener("click", () => reloadNow(news));
    notice.replaceChildren(`${news} `, reload);
    // Kept in view wherever the user is (it sat above the picture, out of sight of a focus below it), and the
    // words a waiting control is described by ("updates by itself") say the news too.
    notice.classList.add("offered");
    pending.removeAttribute("aria-live");  // the notice says it (role=status): not read twice
    pending.querySelector("[data-poll-hint]")?.replaceChildren(`${news} Reload the page to see it.`);
  };
  // Leaving the page (a form sent, a link followed): a reload now would cancel that navigation and land the
  // user back here, so it stops asking; only a page the browser brings back from its cache asks again.
  let leaving = false, stopped = false;
  window.addEventListener("beforeunload", () => { leaving = true; });
  window.addEventListener("pageshow", (e) => {
    if (!e.persisted) return;
    leaving = false;
    if (stopped) { stopped = false; setTimeout(poll, delay); }
  });
  // One question missed is a blip; more, and the page says it is still trying rather than nothing.
  let unanswered = 0;
  const answered = () => { if (unanswered) { unanswered = 0; notice.replaceChildren(); } };
  const poll = async () => {
    if (!pending.isConnected) return;  // an upload's answer replaced the page: it asks for itself
    if (leaving) { stopped = true; return; }
    try {
      const response = await fetch(pending.dataset.pollUrl, {credentials: "same-origin", headers: {Accept: "application/json"}});
      if (leaving) { stopped = true; return; }
      // A proxy's "bad gateway" and the like: the application itself did not answer.
      if ([502, 503, 504].includes(response.status)) throw new Error(`the server answered ${response.status}`);
      answered();
      if (response.status === 404) { update("This image or upload is gone."); return; }  // the page says why
      // Signed out meanwhile (another tab, the session's end): the API says 401, a page sends to sign in.
      if (response.status === 401 || response.status === 403 || response.redirected) { signedOut(); return; }
      if (response.ok) {
        const body = await response.json();
        const done = "state" in body ? body.state !== "working"  // an upload's labels
          : body.status !== "pending" && body.masks_status !== "pending";
        const failed = "state" in body ? body.state === "failed" : [body.status, body.masks_status].includes("failed");
        const embed = pending.querySelector("[data-status]");
        if (done || (embed && body.status !== embed.dataset.status)) {
          update(failed ? "Processing failed; the page says why." : done ? "Processing has finished."
            : "The search vectors are ready; the labels and masks are still being made.");
          return;
        }
      }
    } catch (error) {  // the server is restarting, or the network is down: keep asking
      unanswered += 1;
      if (unanswered >= 2) notice.textContent = "No answer from the server; still trying.";
    }
    delay = Math.min(delay * 1.3, 10000);
    setTimeout(poll, delay);
  };
  setTimeout(poll, delay);
}

}
