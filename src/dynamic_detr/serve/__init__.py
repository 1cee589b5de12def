"""`dynamic-detr serve`: an HTTP JSON API and a web page in front of a trained model (docs/serve.md).

`request` reads and checks an upload, `decode` turns it into an image, `batcher` runs images that arrive together
as one batch on a model thread, `app` holds the routes, `server` loads the model and runs uvicorn; `page.html`
is the page. Needs the `serve` extra (Starlette, uvicorn, python-multipart)."""
