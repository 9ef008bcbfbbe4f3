"""Work-item inbox: e-mail intake that broadcasts work items to a live dashboard."""
