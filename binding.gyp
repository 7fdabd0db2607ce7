{
  "targets": [
    {
      "target_name": "sys_addon",
      "sources": ["native/sys_addon.c"],
      "cflags": ["-O2", "-Wall"]
    },
    {
      "target_name": "virtiofsd-ts-sandbox",
      "type": "executable",
      "sources": ["native/sandbox_launcher.c"],
      "cflags": ["-O2", "-Wall", "-Wextra"]
    }
  ]
}
