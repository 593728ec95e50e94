document.querySelector("#app").textContent = `hello ${import.meta.env.VITE_GREETING ?? "vite"}`;
