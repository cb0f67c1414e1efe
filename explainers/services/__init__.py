"""What the pages and command-line tools call: image loading, the app's service layer, pictures,
plotly figures, lessons, the batch audit. Built on the methods (`explainers.methods`).
"""
