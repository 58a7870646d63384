// Background-error listener and DB::Resume for the store (see bgerror.go for
// why).

#include <rocksdb/db.h>
#include <rocksdb/listener.h>
#include <rocksdb/options.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "bgerror.h"

// The C++ objects inside the C API's handles; bgerror.go checks the layouts
// at run time before using them.
#include "rocksabi.h"

namespace {

class Listener : public rocksdb::EventListener {
 public:
  const char* Name() const override { return "singularity-edge.BackgroundError"; }

  // RocksDB asks every background error's listeners before it records the
  // error; one it will ignore (severity kNoError) stops nothing.
  //
  // Without paranoid checks RocksDB ignores a failed flush: the memtables
  // it could not write stay in memory, no flush is scheduled again, and
  // once they fill every write, and every flush that waits (Close's), waits
  // forever. A failed flush is made a hard error instead: writes fail with
  // it until DB::Resume flushes again. Paranoid checks would do the same
  // but also make a commit's failed WAL write stop every later one, and
  // make open fail on any damaged table file without naming the table.
  //
  // A compaction that runs out of space is ignored too (kNoError in
  // RocksDB 7.8.3's ErrorSeverityMap without paranoid checks; kSoftError
  // with them): RocksDB puts it back in the queue and runs it again every
  // second, each time writing until the disk is full and deleting what it
  // wrote, while level 0 grows; writes slow down at its slowdown trigger
  // and wait forever at its stop trigger, and reads get slower. It is made
  // a hard error as well: writes fail with it, background work stops, and
  // bgerror.go resumes only once the volume has room for the compaction
  // (CompactionNeed). A soft error would keep writes going, but RocksDB
  // clears one only by its own recovery (DB::Resume answers "nothing to
  // do"), and with atomic flush every flush fails to install while one
  // stands. A manual compaction (CompactRange: `db compact`) that runs out
  // of space is left as RocksDB leaves it: it fails to its caller, is not
  // run again, and writes go on (the high-disk-use runbook runs one to
  // free space).
  void OnBackgroundError(rocksdb::BackgroundErrorReason reason, rocksdb::Status* err) override {
    if (err == nullptr || err->ok()) return;
    bool flush = reason == rocksdb::BackgroundErrorReason::kFlush || reason == rocksdb::BackgroundErrorReason::kFlushNoWAL;
    bool compactionNoSpace = reason == rocksdb::BackgroundErrorReason::kCompaction && err->IsNoSpace();
    if (compactionNoSpace && manual_failed_) compactionNoSpace = false;
    manual_failed_ = false;
    if ((flush || compactionNoSpace) && err->severity() < rocksdb::Status::Severity::kHardError) {
      *err = rocksdb::Status(*err, rocksdb::Status::Severity::kHardError);
    }
    if (err->severity() == rocksdb::Status::Severity::kNoError) return;
    std::lock_guard<std::mutex> l(mu_);
    if (err_.empty() || err->severity() > sev_) {
      // RocksDB keeps the first error unless a more severe one comes.
      err_ = err->ToString();
      reason_ = static_cast<int>(reason);
      sev_ = err->severity();
    }
    count_++;
    by_reason_[static_cast<int>(reason)]++;
  }

  // A compaction that failed for lack of space records what it needs: the
  // size of its input files (its output is at most about that). A
  // compaction of the same family that succeeds, or a recovery, forgets it.
  // RocksDB calls this on the compaction's thread just before it reports
  // the failure (OnBackgroundError), which is how a manual one is told.
  void OnCompactionCompleted(rocksdb::DB*, const rocksdb::CompactionJobInfo& ci) override {
    manual_failed_ = false;
    if (ci.status.ok()) {
      std::lock_guard<std::mutex> l(mu_);
      need_.erase(ci.cf_id);
      return;
    }
    if (ci.compaction_reason == rocksdb::CompactionReason::kManualCompaction) {
      // CompactRange returns no status through the C API: remember it.
      if (!ci.status.IsShutdownInProgress() && !ci.status.IsManualCompactionPaused()) {
        std::lock_guard<std::mutex> l(mu_);
        manual_err_ = ci.status.ToString();
        manual_failures_++;
      }
      manual_failed_ = ci.status.IsNoSpace();
      return;
    }
    if (!ci.status.IsNoSpace()) return;
    uint64_t need = 0;
    for (const auto& f : ci.input_files) {
      struct stat st;
      if (stat(f.c_str(), &st) == 0) need += static_cast<uint64_t>(st.st_size);
    }
    std::lock_guard<std::mutex> l(mu_);
    need_[ci.cf_id] = need;
  }

  // RocksDB's own recovery from a full disk waits until the free space
  // exceeds the largest write buffer, checking every 5 s, and meanwhile
  // refuses DB::Resume as "in progress". On a small volume that space
  // never comes back while the WAL holds its preallocation, so the store
  // resumes by itself instead (bgerror.go).
  void OnErrorRecoveryBegin(rocksdb::BackgroundErrorReason, rocksdb::Status, bool* auto_recovery) override {
    if (auto_recovery != nullptr) *auto_recovery = false;
  }

  // Called when DB::Resume (or RocksDB's own recovery) ends: the error is
  // cleared when the recovery succeeded.
  void OnErrorRecoveryEnd(const rocksdb::BackgroundErrorRecoveryInfo& info) override {
    std::lock_guard<std::mutex> l(mu_);
    err_ = info.new_bg_error.ok() ? "" : info.new_bg_error.ToString();
    if (info.new_bg_error.ok()) {
      reason_ = -1;
      sev_ = rocksdb::Status::Severity::kNoError;
      // Resumed: the compactions run again and record anew.
      need_.clear();
    }
  }

  int Reason() {
    std::lock_guard<std::mutex> l(mu_);
    return err_.empty() ? -1 : reason_;
  }

  uint64_t Need() {
    std::lock_guard<std::mutex> l(mu_);
    uint64_t n = 0;
    for (const auto& e : need_) n += e.second;
    return n;
  }

  // ManualFailures returns how many manual compactions failed, and the
  // last one's status (malloc'd, or NULL).
  size_t ManualFailures(char** last) {
    std::lock_guard<std::mutex> l(mu_);
    *last = manual_err_.empty() ? nullptr : strdup(manual_err_.c_str());
    return manual_failures_;
  }

  size_t CountFor(int reason) {
    std::lock_guard<std::mutex> l(mu_);
    auto it = by_reason_.find(reason);
    return it == by_reason_.end() ? 0 : it->second;
  }

  char* Get() {
    std::lock_guard<std::mutex> l(mu_);
    return err_.empty() ? nullptr : strdup(err_.c_str());
  }

  size_t Count() {
    std::lock_guard<std::mutex> l(mu_);
    return count_;
  }

 private:
  std::mutex mu_;
  std::string err_;
  int reason_ = -1;  // the rocksdb::BackgroundErrorReason of err_
  rocksdb::Status::Severity sev_ = rocksdb::Status::Severity::kNoError;
  size_t count_ = 0;
  std::map<int, size_t> by_reason_;
  std::map<uint32_t, uint64_t> need_;  // by column family id
  size_t manual_failures_ = 0;
  std::string manual_err_;
  // Set between a manual compaction's failure for lack of space and its
  // report, on the compaction's thread.
  static thread_local bool manual_failed_;
};

thread_local bool Listener::manual_failed_ = false;

struct Watch {
  std::shared_ptr<Listener> listener;
};

}  // namespace

extern "C" void* edge_bgerror_watch(void* opts) {
  auto* w = new Watch{std::make_shared<Listener>()};
  static_cast<rocksdb_options_t*>(opts)->rep.listeners.push_back(w->listener);
  return w;
}

extern "C" void edge_bgerror_watch_destroy(void* watch) { delete static_cast<Watch*>(watch); }

extern "C" char* edge_bgerror_get(void* watch) { return static_cast<Watch*>(watch)->listener->Get(); }

extern "C" size_t edge_bgerror_count(void* watch) { return static_cast<Watch*>(watch)->listener->Count(); }

extern "C" int edge_bgerror_reason(void* watch) { return static_cast<Watch*>(watch)->listener->Reason(); }

extern "C" size_t edge_bgerror_count_for(void* watch, int reason) {
  return static_cast<Watch*>(watch)->listener->CountFor(reason);
}

extern "C" size_t edge_bgerror_manual_failures(void* watch, char** last) {
  return static_cast<Watch*>(watch)->listener->ManualFailures(last);
}

extern "C" uint64_t edge_bgerror_compaction_need(void* watch) {
  return static_cast<Watch*>(watch)->listener->Need();
}

extern "C" const char* edge_db_name(void* db) { return static_cast<rocksdb_t*>(db)->rep->GetName().c_str(); }

extern "C" char* edge_db_resume(void* db) {
  rocksdb::Status s = static_cast<rocksdb_t*>(db)->rep->Resume();
  return s.ok() ? nullptr : strdup(s.ToString().c_str());
}

extern "C" const char* edge_cf_name(void* cf) {
  return static_cast<rocksdb_column_family_handle_t*>(cf)->rep->GetName().c_str();
}

extern "C" char* edge_db_switch_memtables(void* db, void** cfs, int n) {
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  handles.reserve(n);
  for (int i = 0; i < n; i++) handles.push_back(static_cast<rocksdb_column_family_handle_t*>(cfs[i])->rep);
  // Neither waits: not for the flush (wait), nor, before it, until one
  // more immutable memtable would not stall writes (allow_write_stall).
  rocksdb::FlushOptions fo;
  fo.wait = false;
  fo.allow_write_stall = true;
  rocksdb::Status s = static_cast<rocksdb_t*>(db)->rep->Flush(fo, handles);
  return s.ok() ? nullptr : strdup(s.ToString().c_str());
}

