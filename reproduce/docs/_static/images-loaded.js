// After the page and every <img> have settled (loaded or failed), record on <body> how many
// images there are and how many decoded with a non-zero size. `python -m reproduce.docs`
// reads these attributes from the DOM that headless Chromium dumps.
(function () {
  "use strict";
  function settle(img) {
    if (img.complete) {
      return Promise.resolve();
    }
    return new Promise(function (resolve) {
      img.addEventListener("load", resolve, { once: true });
      img.addEventListener("error", resolve, { once: true });
    });
  }
  window.addEventListener("load", function () {
    var imgs = Array.prototype.slice.call(document.images);
    imgs.forEach(function (img) {
      // A lazy image below the fold would never load in a fixed-size headless window.
      if (img.loading === "lazy") {
        img.loading = "eager";
      }
    });
    Promise.all(imgs.map(settle)).then(function () {
      var failed = imgs.filter(function (img) {
        return !(img.complete && img.naturalWidth > 0);
      });
      var body = document.body;
      body.setAttribute("data-images-total", String(imgs.length));
      body.setAttribute("data-images-loaded", String(imgs.length - failed.length));
      body.setAttribute(
        "data-images-failed",
        failed.map(function (img) { return img.getAttribute("src"); }).join(" ")
      );
      body.setAttribute("data-images-checked", "1");
    });
  });
})();
