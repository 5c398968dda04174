import java.sql.*;

/** Connector/J transactions through the proxy: setAutoCommit(false) (which the driver sends, or
 *  not, from the server status it was told), insert, rollback, count; a savepoint round trip.
 *  Prints key=value lines. Arguments: url user password table marker. */
public class Txn {
    public static void main(String[] args) throws Exception {
        String table = args[3], marker = args[4];
        try (Connection c = DriverManager.getConnection(args[0], args[1], args[2])) {
            System.out.println("autocommit_at_start=" + c.getAutoCommit());
            try (Statement s = c.createStatement()) {
                s.executeUpdate("DELETE FROM " + table + " WHERE v = '" + marker + "'");
            }
            c.setAutoCommit(false);
            try (Statement s = c.createStatement()) {
                s.executeUpdate("INSERT INTO " + table + " (v) VALUES ('" + marker + "')");
            }
            c.rollback();
            System.out.println("after_rollback=" + count(c, table, marker));
            try (Statement s = c.createStatement(); ResultSet r = s.executeQuery("SELECT @@autocommit")) {
                r.next();
                System.out.println("autocommit=" + r.getInt(1));
            }
            Savepoint sp = c.setSavepoint("sp1");
            try (Statement s = c.createStatement()) {
                s.executeUpdate("INSERT INTO " + table + " (v) VALUES ('" + marker + "')");
            }
            c.rollback(sp);
            c.releaseSavepoint(sp);
            c.commit();
            System.out.println("after_savepoint=" + count(c, table, marker));
        }
    }

    static int count(Connection c, String table, String marker) throws SQLException {
        try (Statement s = c.createStatement();
             ResultSet r = s.executeQuery("SELECT COUNT(*) FROM " + table + " WHERE v = '" + marker + "'")) {
            r.next();
            return r.getInt(1);
        }
    }
}
